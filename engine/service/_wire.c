/* engine.service._wire: the engine's two hot Avro encodings, compiled (optional).
 *
 * engine.service.wire.FastWire reads keel.OrderCommand and writes keel.EngineEvent in
 * Avro binary by hand because fastavro's per-call set-up dominates; in Python that is
 * still most of the engine's CPU per order. This module does the same walk in C, with
 * exactly FastWire's results: the same command NamedTuples (built with the class's
 * tp_alloc, as engine/_cbook.c builds events) and the same event bytes.
 *
 * Whatever is not the plain case goes to the fallback callables given at construction
 * (the codec's decode_command / encode_event), which decode older writer schemas and
 * explain faults exactly: another writer header, a malformed or truncated body, a varint
 * beyond 64 bits, invalid UTF-8, an event type or value this file does not expect.
 * tests/engine_service/test_wire.py runs every case through both paths.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HEADER_LEN 10       /* Avro single-object framing: C3 01 + 8-byte fingerprint */
#define MAX_EVENTS 32
#define MAX_PAIR 256        /* longer pair names (never configured) take the fallback */
#define N_COMMANDS 5        /* Place, Cancel, Amend, CancelAll, SetTrading: union order */

static const Py_ssize_t COMMAND_FIELDS[N_COMMANDS] = {10, 3, 5, 2, 2};

typedef struct {
    PyObject_HEAD
    char cmd_header[HEADER_LEN];
    int cmd_header_ok;          /* 0: the codec has no plain command writer: always fall back */
    char event_header[HEADER_LEN];
    int events_ok;              /* 0: events are framed otherwise (registry): fall back */
    PyTypeObject *cmd_types[N_COMMANDS];
    PyTypeObject *event_types[MAX_EVENTS];
    uint32_t bool_mask[MAX_EVENTS];     /* bit i: field i of that event is a boolean */
    int n_events;
    PyObject *decode_fallback;
    PyObject *encode_fallback;
    PyObject *k_value, *k_key;
    /* The partition's commands nearly all name one or two pairs: reuse the str. */
    PyObject *last_pair;
    char last_pair_utf8[MAX_PAIR];
    Py_ssize_t last_pair_len;
} Wire;

/* ---- decoding ---- */

/* One Avro long at *pos. -1 (nothing raised) when the bytes are not a plain varint of at
 * most 64 bits: the caller falls back, as FastWire does on its ValueError/IndexError. */
static int read_long(const uint8_t *b, Py_ssize_t n, Py_ssize_t *pos, int64_t *out)
{
    uint64_t z = 0;
    int shift = 0;
    for (;;) {
        if (*pos >= n)
            return -1;
        uint8_t byte = b[(*pos)++];
        if (shift == 63 && (byte & 0x7E))
            return -1;                  /* would not fit in 64 bits */
        z |= (uint64_t)(byte & 0x7F) << shift;
        if (byte < 0x80)
            break;
        shift += 7;
        if (shift > 63)
            return -1;
    }
    *out = (int64_t)((z >> 1) ^ (~(z & 1) + 1));
    return 0;
}

static PyObject *pair_str(Wire *w, const char *s, Py_ssize_t n)
{
    if (w->last_pair != NULL && n == w->last_pair_len && memcmp(s, w->last_pair_utf8, n) == 0) {
        Py_INCREF(w->last_pair);
        return w->last_pair;
    }
    PyObject *str = PyUnicode_DecodeUTF8(s, n, "strict");
    if (str == NULL)
        return NULL;
    if (n <= MAX_PAIR) {
        Py_XSETREF(w->last_pair, Py_NewRef(str));
        memcpy(w->last_pair_utf8, s, n);
        w->last_pair_len = n;
    }
    return str;
}

/* (command, request_id), or NULL with no exception set when the fallback must decide. */
static PyObject *fast_decode(Wire *w, const uint8_t *b, Py_ssize_t n)
{
    Py_ssize_t pos = HEADER_LEN;
    int64_t tag, branch, len, v[10];
    PyObject *rid = NULL, *pair = NULL, *cmd = NULL;

    if (read_long(b, n, &pos, &tag) < 0)
        return NULL;
    if (tag == 1) {
        if (read_long(b, n, &pos, &len) < 0 || len < 0 || len > n - pos)
            return NULL;
        rid = PyUnicode_DecodeUTF8((const char *)b + pos, len, "strict");
        if (rid == NULL)
            goto fail;
        pos += len;
    } else if (tag != 0) {
        return NULL;
    }
    if (read_long(b, n, &pos, &branch) < 0 || branch < 0 || branch >= N_COMMANDS)
        goto fail;
    if (read_long(b, n, &pos, &len) < 0 || len < 0 || len > n - pos)
        goto fail;
    pair = pair_str(w, (const char *)b + pos, len);
    if (pair == NULL)
        goto fail;
    pos += len;
    Py_ssize_t fields = COMMAND_FIELDS[branch];
    if (branch == 4) {              /* SetTrading: a boolean byte, then ts */
        if (pos >= n || b[pos] > 1)
            goto fail;
        v[0] = b[pos++];
        if (read_long(b, n, &pos, &v[1]) < 0)
            goto fail;
    } else {
        for (Py_ssize_t i = 0; i < fields; i++)
            if (read_long(b, n, &pos, &v[i]) < 0)
                goto fail;
    }
    if (pos != n)
        goto fail;                  /* trailing bytes: not this schema */

    PyTypeObject *t = w->cmd_types[branch];
    cmd = t->tp_alloc(t, fields + 1);
    if (cmd == NULL)
        goto fail;
    PyTuple_SET_ITEM(cmd, 0, pair);
    pair = NULL;
    for (Py_ssize_t i = 0; i < fields; i++) {
        PyObject *item = (branch == 4 && i == 0) ? PyBool_FromLong((long)v[0])
                                                  : PyLong_FromLongLong(v[i]);
        if (item == NULL)
            goto fail;
        PyTuple_SET_ITEM(cmd, i + 1, item);
    }
    PyObject *result = PyTuple_Pack(2, cmd, rid != NULL ? rid : Py_None);
    Py_DECREF(cmd);
    Py_XDECREF(rid);
    return result;

fail:
    Py_XDECREF(rid);
    Py_XDECREF(pair);
    Py_XDECREF(cmd);
    if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
        PyErr_Clear();              /* the codec explains bad UTF-8 */
    return NULL;
}

static PyObject *Wire_decode_command(Wire *w, PyObject *data)
{
    if (!PyBytes_Check(data))
        return PyObject_CallOneArg(w->decode_fallback, data);
    const uint8_t *b = (const uint8_t *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (w->cmd_header_ok && n >= HEADER_LEN && memcmp(b, w->cmd_header, HEADER_LEN) == 0) {
        PyObject *result = fast_decode(w, b, n);
        if (result != NULL || PyErr_Occurred())
            return result;
    }
    return PyObject_CallOneArg(w->decode_fallback, data);
}

/* ---- encoding ---- */

static inline char *put_long(char *p, int64_t n)
{
    uint64_t z = ((uint64_t)n << 1) ^ (uint64_t)(n >> 63);
    while (z >= 0x80) {
        *p++ = (char)((z & 0x7F) | 0x80);
        z >>= 7;
    }
    *p++ = (char)z;
    return p;
}

/* The event's bytes, or NULL with no exception set when the fallback must encode it. */
static PyObject *fast_encode(Wire *w, PyObject *ev)
{
    PyTypeObject *t = Py_TYPE(ev);
    int idx = -1;
    for (int i = 0; i < w->n_events; i++)
        if (w->event_types[i] == t) {
            idx = i;
            break;
        }
    if (idx < 0 || !w->events_ok)
        return NULL;
    Py_ssize_t size = PyTuple_GET_SIZE(ev);
    if (size < 3 || size > 32)
        return NULL;
    PyObject *pair = PyTuple_GET_ITEM(ev, 0);
    if (!PyUnicode_CheckExact(pair))
        return NULL;
    Py_ssize_t pair_len;
    const char *pair_utf8 = PyUnicode_AsUTF8AndSize(pair, &pair_len);
    if (pair_utf8 == NULL || pair_len > MAX_PAIR) {
        PyErr_Clear();
        return NULL;
    }
    char buf[HEADER_LEN + 10 + MAX_PAIR + 10 * 34];
    char *p = buf;
    memcpy(p, w->event_header, HEADER_LEN);
    p = put_long(p + HEADER_LEN, pair_len);
    memcpy(p, pair_utf8, pair_len);
    p += pair_len;
    uint32_t bools = w->bool_mask[idx];
    for (Py_ssize_t i = 1; i < size; i++) {
        if (i == 3)
            p = put_long(p, idx);   /* the union branch sits between ts and the body */
        PyObject *v = PyTuple_GET_ITEM(ev, i);
        if (bools & (1u << i)) {
            int truth = PyObject_IsTrue(v);
            if (truth < 0) {
                PyErr_Clear();
                return NULL;
            }
            *p++ = truth ? 1 : 0;
            continue;
        }
        if (!PyLong_Check(v))
            return NULL;
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (n == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return NULL;
        }
        p = put_long(p, n);
    }
    if (size == 3)
        p = put_long(p, idx);
    return PyBytes_FromStringAndSize(buf, p - buf);
}

static PyObject *encode_one(Wire *w, PyObject *ev)
{
    PyObject *out = fast_encode(w, ev);
    if (out != NULL || PyErr_Occurred())
        return out;
    return PyObject_CallOneArg(w->encode_fallback, ev);
}

static PyObject *Wire_encode_event(Wire *w, PyObject *ev)
{
    if (!PyTuple_Check(ev))
        return PyObject_CallOneArg(w->encode_fallback, ev);
    return encode_one(w, ev);
}

/* [{"value": event bytes, "key": key}, ...]: produce_batch's records for the events. */
static PyObject *Wire_event_records(Wire *w, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "event_records(events, key)");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "events must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *value = PyTuple_Check(items[i]) ? encode_one(w, items[i])
                                                  : PyObject_CallOneArg(w->encode_fallback,
                                                                        items[i]);
        if (value == NULL)
            goto fail;
        PyObject *rec = PyDict_New();
        if (rec == NULL || PyDict_SetItem(rec, w->k_value, value) < 0
            || PyDict_SetItem(rec, w->k_key, args[1]) < 0) {
            Py_DECREF(value);
            Py_XDECREF(rec);
            goto fail;
        }
        Py_DECREF(value);
        PyList_SET_ITEM(out, i, rec);
    }
    Py_DECREF(seq);
    return out;
fail:
    Py_DECREF(seq);
    Py_XDECREF(out);
    return NULL;
}

/* ---- the type ---- */

static int copy_header(PyObject *obj, char *dst, int *ok, const char *what)
{
    *ok = 0;
    if (obj == Py_None)
        return 0;
    if (!PyBytes_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be bytes or None", what);
        return -1;
    }
    if (PyBytes_GET_SIZE(obj) == HEADER_LEN) {
        memcpy(dst, PyBytes_AS_STRING(obj), HEADER_LEN);
        *ok = 1;
    }
    return 0;
}

static int types_from(PyObject *tuple, PyTypeObject **dst, int max, const char *what)
{
    if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) > max) {
        PyErr_Format(PyExc_TypeError, "%s must be a tuple of at most %d classes", what, max);
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tuple); i++) {
        PyObject *t = PyTuple_GET_ITEM(tuple, i);
        if (!PyType_Check(t) || !PyType_IsSubtype((PyTypeObject *)t, &PyTuple_Type)) {
            PyErr_Format(PyExc_TypeError, "%s[%zd] is not a tuple class", what, i);
            return -1;
        }
        Py_INCREF(t);
        dst[i] = (PyTypeObject *)t;
    }
    return (int)PyTuple_GET_SIZE(tuple);
}

static int Wire_init(Wire *w, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"command_header", "event_header", "command_types", "event_types",
                             "bool_masks", "decode_fallback", "encode_fallback", NULL};
    PyObject *ch, *eh, *ct, *et, *masks, *dec, *enc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO!O!O!OO", kwlist, &ch, &eh, &PyTuple_Type,
                                     &ct, &PyTuple_Type, &et, &PyTuple_Type, &masks, &dec, &enc))
        return -1;
    if (w->decode_fallback != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Wire is already initialised");
        return -1;
    }
    if (PyTuple_GET_SIZE(ct) != N_COMMANDS || PyTuple_GET_SIZE(masks) != PyTuple_GET_SIZE(et)) {
        PyErr_SetString(PyExc_ValueError, "need 5 command types and one bool mask per event");
        return -1;
    }
    if (copy_header(ch, w->cmd_header, &w->cmd_header_ok, "command_header") < 0
        || copy_header(eh, w->event_header, &w->events_ok, "event_header") < 0
        || types_from(ct, w->cmd_types, N_COMMANDS, "command_types") < 0)
        return -1;
    int n = types_from(et, w->event_types, MAX_EVENTS, "event_types");
    if (n < 0)
        return -1;
    w->n_events = n;
    for (int i = 0; i < n; i++) {
        unsigned long m = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(masks, i));
        if (m == (unsigned long)-1 && PyErr_Occurred())
            return -1;
        w->bool_mask[i] = (uint32_t)m;
    }
    w->decode_fallback = Py_NewRef(dec);
    w->encode_fallback = Py_NewRef(enc);
    w->k_value = PyUnicode_InternFromString("value");
    w->k_key = PyUnicode_InternFromString("key");
    return (w->k_value == NULL || w->k_key == NULL) ? -1 : 0;
}

static void Wire_dealloc(Wire *w)
{
    for (int i = 0; i < N_COMMANDS; i++)
        Py_XDECREF(w->cmd_types[i]);
    for (int i = 0; i < w->n_events; i++)
        Py_XDECREF(w->event_types[i]);
    Py_XDECREF(w->decode_fallback);
    Py_XDECREF(w->encode_fallback);
    Py_XDECREF(w->k_value);
    Py_XDECREF(w->k_key);
    Py_XDECREF(w->last_pair);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyMethodDef Wire_methods[] = {
    {"decode_command", (PyCFunction)Wire_decode_command, METH_O,
     "keel.OrderCommand bytes -> (command, request_id), as codec.decode_command"},
    {"encode_event", (PyCFunction)Wire_encode_event, METH_O,
     "engine event -> keel.EngineEvent bytes, as codec.encode_event"},
    {"event_records", (PyCFunction)(void (*)(void))Wire_event_records, METH_FASTCALL,
     "event_records(events, key) -> [{'value': bytes, 'key': key}, ...]"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WireType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine.service._wire.Wire",
    .tp_basicsize = sizeof(Wire),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The engine's command decoder and event encoder (see engine.service.wire).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Wire_init,
    .tp_dealloc = (destructor)Wire_dealloc,
    .tp_methods = Wire_methods,
};

static struct PyModuleDef wire_module = {
    PyModuleDef_HEAD_INIT, "engine.service._wire",
    "Compiled keel.OrderCommand decoding and keel.EngineEvent encoding (optional).", -1, NULL,
};

PyMODINIT_FUNC PyInit__wire(void)
{
    if (PyType_Ready(&WireType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&wire_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Wire", (PyObject *)&WireType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
