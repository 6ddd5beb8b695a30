/* sinks._depth: keel.depth values -> columns, compiled (optional).
 *
 * sinks/depth_columns.py reads a batch of depth updates into head columns and flat level
 * arrays by numpy array operations; that read was about half of the ClickHouse sink's
 * polling thread. This module reads the same records in one pass each, with the same
 * rule for which records it vouches for (anything else is left out and goes through the
 * codec): the writer's 10-byte header; a pair name of under 64 ASCII bytes; first, last
 * and ts as varints of at most 64 bits, first >= 0 and 0 <= last < 2^62; a flag byte of 0
 * or 1; then bids and asks, each an Avro array of (long, long) items in blocks (a
 * negative count is followed by the block's byte size, which is skipped), every varint
 * among them of at most 9 bytes; and the record ending right after the asks.
 *
 * The parse runs without the GIL (the values are held by a tuple meanwhile), so the
 * sink's insert thread can run beside it. tests/sinks/test_depth_native.py and
 * test_depth_varints.py run every case through both readers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HEADER_LEN 10
#define MIN_LEN (HEADER_LEN + 7)    /* header, name length, 3 longs, flag, two array ends */
#define MAX_NAMES 1024              /* distinct pairs in one call; more: ValueError */
#define MAX_ID ((int64_t)1 << 62)

typedef struct {
    int64_t *v;
    Py_ssize_t n, cap;
} Column;

static int reserve(Column *c, Py_ssize_t more)
{
    if (c->n + more <= c->cap)
        return 0;
    Py_ssize_t cap = c->cap ? c->cap : 4096;
    while (cap < c->n + more)
        cap *= 2;
    int64_t *v = PyMem_RawRealloc(c->v, (size_t)cap * sizeof(int64_t));
    if (v == NULL)
        return -1;
    c->v = v;
    c->cap = cap;
    return 0;
}

/* A varint at *p (before end) of at most `widest` bytes; with 10, the 10th may only
 * hold the 64th bit. 0 and the raw value, or -1. */
static inline int varint(const uint8_t **p, const uint8_t *end, int widest, uint64_t *out)
{
    const uint8_t *q = *p;
    if (q < end && *q < 0x80) {             /* one byte: most counts, many quantities */
        *out = *q;
        *p = q + 1;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < widest; i++) {
        if (q >= end)
            return -1;
        uint8_t b = *q++;
        if (i == 9 && b > 1)
            return -1;
        v |= (uint64_t)(b & 0x7F) << (7 * i);
        if (b < 0x80) {
            *p = q;
            *out = v;
            return 0;
        }
    }
    return -1;
}

static inline int64_t unzig(uint64_t raw)
{
    return (int64_t)(raw >> 1) ^ -(int64_t)(raw & 1);
}

typedef struct {
    Py_ssize_t len;
    const uint8_t *name;        /* points into a value held by the call's tuple */
} Name;

typedef struct {
    /* per record that passed */
    Column index, pair, first, last, ts, snapshot, bid_count, ask_count;
    /* per level */
    Column bid_price, bid_qty, ask_price, ask_qty;
    Name names[MAX_NAMES];
    int n_names, last_name;
    int too_many;
    int no_memory;
} Read;

/* One side's array from *p: its items appended to price/qty; the item count, or -1
 * (columns left longer than before: the caller cuts them back). */
static Py_ssize_t side(const uint8_t **p, const uint8_t *end, Column *price, Column *qty,
                      int *no_memory)
{
    const uint8_t *q = *p;
    Py_ssize_t items = 0;
    for (;;) {
        uint64_t raw;
        if (varint(&q, end, 9, &raw))
            return -1;
        int64_t count = unzig(raw);
        if (count < 0) {                    /* a block that gives its byte size */
            uint64_t size;
            if (varint(&q, end, 9, &size))
                return -1;
            count = -count;                 /* 9 bytes: |count| < 2^62, no overflow */
        }
        if (count > (end - q) >> 1)         /* at least two bytes an item */
            return -1;
        if (count == 0)
            break;
        if (reserve(price, count) || reserve(qty, count)) {
            *no_memory = 1;
            return -1;
        }
        int64_t *pv = price->v + price->n, *qv = qty->v + qty->n;
        for (int64_t i = 0; i < count; i++) {
            uint64_t a, b;
            if (varint(&q, end, 9, &a) || varint(&q, end, 9, &b))
                return -1;
            pv[i] = unzig(a);
            qv[i] = unzig(b);
        }
        price->n += count;
        qty->n += count;
        items += count;
    }
    *p = q;
    return items;
}

static inline int same(const uint8_t *a, const uint8_t *b, Py_ssize_t len)
{
    for (Py_ssize_t i = 0; i < len; i++)    /* names are a few bytes: no libc call */
        if (a[i] != b[i])
            return 0;
    return 1;
}

static int name_code(Read *r, const uint8_t *name, Py_ssize_t len)
{
    Name *last = &r->names[r->last_name];
    if (r->n_names && last->len == len && same(last->name, name, len))
        return r->last_name;
    for (int i = 0; i < r->n_names; i++) {
        if (r->names[i].len == len && same(r->names[i].name, name, len))
            return r->last_name = i;
    }
    if (r->n_names == MAX_NAMES) {
        r->too_many = 1;
        return -1;
    }
    r->names[r->n_names].len = len;
    r->names[r->n_names].name = name;
    return r->last_name = r->n_names++;
}

/* Read one record; 1 when it passed (columns appended), 0 when it is left out. */
static int record(Read *r, Py_ssize_t i, const uint8_t *b, Py_ssize_t n, const char *header)
{
    uint64_t b8, h8;
    uint16_t b2, h2;
    if (n < MIN_LEN)
        return 0;
    memcpy(&b8, b, 8);                      /* fixed sizes: compiled to loads */
    memcpy(&h8, header, 8);
    memcpy(&b2, b + 8, 2);
    memcpy(&h2, header + 8, 2);
    if (b8 != h8 || b2 != h2)
        return 0;
    const uint8_t *end = b + n, *p = b + HEADER_LEN;
    uint8_t head = *p++;
    if (head >= 0x80 || (head & 1))
        return 0;
    Py_ssize_t len = head >> 1;
    if (end - p < len)
        return 0;
    const uint8_t *name = p;
    for (Py_ssize_t j = 0; j < len; j++)
        if (name[j] >= 0x80)
            return 0;
    p += len;
    uint64_t raw[3];
    for (int j = 0; j < 3; j++)
        if (varint(&p, end, 10, &raw[j]))
            return 0;
    int64_t first = unzig(raw[0]), last = unzig(raw[1]), ts = unzig(raw[2]);
    if (first < 0 || last < 0 || last >= MAX_ID)
        return 0;
    if (p >= end || *p > 1)
        return 0;
    int64_t flag = *p++;
    Py_ssize_t bids_at = r->bid_price.n, asks_at = r->ask_price.n;
    Py_ssize_t bids = side(&p, end, &r->bid_price, &r->bid_qty, &r->no_memory);
    Py_ssize_t asks = bids < 0 ? -1 : side(&p, end, &r->ask_price, &r->ask_qty,
                                          &r->no_memory);
    int code = (asks < 0 || p != end) ? -1 : name_code(r, name, len);
    if (code < 0) {
        r->bid_price.n = r->bid_qty.n = bids_at;
        r->ask_price.n = r->ask_qty.n = asks_at;
        return 0;
    }
    /* Head columns have room for every record (reserved before the walk). */
    r->index.v[r->index.n++] = i;
    r->pair.v[r->pair.n++] = code;
    r->first.v[r->first.n++] = first;
    r->last.v[r->last.n++] = last;
    r->ts.v[r->ts.n++] = ts;
    r->snapshot.v[r->snapshot.n++] = flag;
    r->bid_count.v[r->bid_count.n++] = bids;
    r->ask_count.v[r->ask_count.n++] = asks;
    return 1;
}

static PyObject *as_bytes(Column *c)
{
    return PyBytes_FromStringAndSize((const char *)c->v, c->n * (Py_ssize_t)sizeof(int64_t));
}

PyDoc_STRVAR(read_doc,
"read(values, header) -> (index, names, pair, first, last, ts, snapshot, bid_count,\n"
"bid_price, bid_qty, ask_count, ask_price, ask_qty)\n\n"
"The records of `values` (bytes) the reader vouches for, as native int64 columns in\n"
"bytes (snapshot: 0/1), pair codes into `names` (first come first); see the module.");

static PyObject *depth_read(PyObject *self, PyObject *args)
{
    PyObject *values;
    const char *header;
    Py_ssize_t header_len;
    if (!PyArg_ParseTuple(args, "Oy#:read", &values, &header, &header_len))
        return NULL;
    if (header_len != HEADER_LEN) {
        PyErr_SetString(PyExc_ValueError, "the header is 10 bytes");
        return NULL;
    }
    PyObject *held = PySequence_Tuple(values);
    if (held == NULL)
        return NULL;
    Py_ssize_t k = PyTuple_GET_SIZE(held);
    const uint8_t **data = PyMem_Malloc((size_t)(k ? k : 1) * sizeof(*data));
    Py_ssize_t *lens = PyMem_Malloc((size_t)(k ? k : 1) * sizeof(*lens));
    Read *r = PyMem_Calloc(1, sizeof(Read));
    PyObject *out = NULL;
    if (data == NULL || lens == NULL || r == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Column *heads[] = {&r->index, &r->pair, &r->first, &r->last, &r->ts, &r->snapshot,
                       &r->bid_count, &r->ask_count};
    for (size_t j = 0; j < sizeof(heads) / sizeof(heads[0]); j++) {
        if (reserve(heads[j], k ? k : 1)) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *v = PyTuple_GET_ITEM(held, i);
        if (PyBytes_Check(v)) {
            data[i] = (const uint8_t *)PyBytes_AS_STRING(v);
            lens[i] = PyBytes_GET_SIZE(v);
        } else {
            data[i] = NULL;                 /* not bytes: the codec says what it is */
            lens[i] = 0;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < k && !r->no_memory && !r->too_many; i++)
        if (data[i] != NULL)
            record(r, i, data[i], lens[i], header);
    Py_END_ALLOW_THREADS
    if (r->no_memory) {
        PyErr_NoMemory();
        goto done;
    }
    if (r->too_many) {
        PyErr_Format(PyExc_ValueError, "more than %d pairs in one read", MAX_NAMES);
        goto done;
    }
    PyObject *names = PyList_New(r->n_names);
    if (names == NULL)
        goto done;
    for (int j = 0; j < r->n_names; j++) {
        PyObject *s = PyUnicode_DecodeASCII((const char *)r->names[j].name,
                                            r->names[j].len, NULL);
        if (s == NULL) {
            Py_DECREF(names);
            goto done;
        }
        PyList_SET_ITEM(names, j, s);
    }
    out = Py_BuildValue("(NNNNNNNNNNNNN)", as_bytes(&r->index), names, as_bytes(&r->pair),
                        as_bytes(&r->first), as_bytes(&r->last), as_bytes(&r->ts),
                        as_bytes(&r->snapshot), as_bytes(&r->bid_count),
                        as_bytes(&r->bid_price), as_bytes(&r->bid_qty),
                        as_bytes(&r->ask_count), as_bytes(&r->ask_price),
                        as_bytes(&r->ask_qty));
done:
    if (r != NULL) {
        Column *all[] = {&r->index, &r->pair, &r->first, &r->last, &r->ts, &r->snapshot,
                         &r->bid_count, &r->ask_count, &r->bid_price, &r->bid_qty,
                         &r->ask_price, &r->ask_qty};
        for (size_t j = 0; j < sizeof(all) / sizeof(all[0]); j++)
            PyMem_RawFree(all[j]->v);
        PyMem_Free(r);
    }
    PyMem_Free(data);
    PyMem_Free(lens);
    Py_DECREF(held);
    return out;
}

static PyMethodDef depth_methods[] = {
    {"read", depth_read, METH_VARARGS, read_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef depth_module = {
    PyModuleDef_HEAD_INIT, "sinks._depth",
    "keel.depth values -> columns, compiled (sinks/depth_columns.py's twin).", -1,
    depth_methods,
};

PyMODINIT_FUNC PyInit__depth(void)
{
    return PyModule_Create(&depth_module);
}
