/* The compiled order book: engine._cbook.OrderBook.
 *
 * Same API (helpers/BOOK_API.md) and the same semantics, events and snapshot bytes as the
 * pure engine.book.OrderBook; engine/domain.py's docstring is the contract. This file only
 * chooses faster data structures:
 *   - orders live in a pool of structs (free list), found by id through an open-addressing
 *     map (linear probing, backward-shift deletion), queued per level in an intrusive
 *     doubly linked FIFO, so cancelling from the middle of a queue is O(1);
 *   - per side, a map price -> level and a sorted array of the active levels with the best
 *     price at the END, so matching consumes from the tail and most inserts land near it;
 *   - a level emptied by a change stays in its side's price map (inactive, marked dirty)
 *     until take_level_changes() reports it, which is why a level is on the dirty list
 *     at most once and the record never needs de-duplicating.
 * Events are instances of engine.domain's NamedTuple classes, built with the class's
 * tp_alloc and filled in place. Values are int64 inside; sums that could exceed that
 * (level and book totals, notionals, fees) use __int128, and a fee too large even for
 * that falls back to engine.domain.fee.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef __int128 i128;

enum { BUY = 0, SELL = 1 };
enum { LIMIT = 0, MARKET = 1, LIMIT_MAKER = 2 };
enum { GTC = 0, IOC = 1, FOK = 2 };
enum { STP_NONE = 0, EXPIRE_TAKER = 1, EXPIRE_MAKER = 2, EXPIRE_BOTH = 3 };
enum { CANCELED = 0, CANCEL_ALL = 1, IOC_REMAINDER = 2, NO_LIQUIDITY = 3, SELF_TRADE = 4 };
/* engine.domain.ResultCode values; module init checks them against the enum. */
enum {
    RC_INVALID_REQUEST = -1100, RC_BELOW_MIN_NOTIONAL = -3003, RC_INVALID_PRICE = -3004,
    RC_INVALID_QUANTITY = -3005, RC_MARKET_CLOSED = -3006, RC_UNKNOWN_ORDER = -3101,
    RC_DUPLICATE_ORDER_ID = -3102, RC_POST_ONLY_WOULD_CROSS = -3103,
    RC_FOK_NOT_FILLABLE = -3104, RC_AMEND_WOULD_CROSS = -3106, RC_AMEND_WOULD_ENLARGE = -3107,
};

#define RECORD_SIZE 34 /* "<qqBqqB" */

/* ---- module-level references to engine.domain / engine.snapshot ---- */
static PyTypeObject *T_Accepted, *T_Rejected, *T_Trade, *T_Cancelled, *T_Amended,
    *T_Expired, *T_Done, *T_MarketStatus;
static PyTypeObject *T_Place, *T_Cancel, *T_Amend, *T_CancelAll, *T_SetTrading;
static PyObject *fee_fn, *SnapshotError;

/* ======================================================================================
 * int64 -> int32 map: open addressing, linear probing, backward-shift deletion.
 * A slot holds 32 bits of the key's hash and the value; the key itself is read from the
 * record the value points at (an order's id, a level's price). Small slots keep the id
 * map dense in cache: the duplicate-id check on every place is usually a miss, and a
 * miss only ever touches slots.
 * ==================================================================================== */
typedef struct {
    uint32_t tag; /* high 32 bits of key * golden ratio; its top bits are the home slot */
    int32_t val;  /* < 0: empty slot */
} Slot;

typedef struct {
    Slot *slots;
    size_t mask, used;
    unsigned log2cap; /* 4..32 */
} Map;

/* Where the keys live: key of value v = *(int64_t *)(base + v * stride). */
typedef struct {
    const char *base;
    size_t stride;
} Keys;

static inline uint32_t map_tag(int64_t key)
{
    return (uint32_t)(((uint64_t)key * 0x9E3779B97F4A7C15ULL) >> 32);
}

static inline size_t map_home(const Map *m, uint32_t tag)
{
    return (size_t)(tag >> (32 - m->log2cap));
}

static inline int64_t key_at(Keys k, int32_t v)
{
    return *(const int64_t *)(k.base + (size_t)v * k.stride);
}

static int map_init(Map *m, unsigned log2cap)
{
    if (log2cap > 32) {
        PyErr_SetString(PyExc_MemoryError, "map too large");
        return -1;
    }
    size_t cap = (size_t)1 << log2cap;
    m->slots = PyMem_Malloc(cap * sizeof(Slot));
    if (m->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < cap; i++)
        m->slots[i].val = -1;
    m->mask = cap - 1;
    m->used = 0;
    m->log2cap = log2cap;
    return 0;
}

static inline int32_t map_get(const Map *m, Keys keys, int64_t key)
{
    uint32_t tag = map_tag(key);
    size_t i = map_home(m, tag);
    for (;;) {
        const Slot *s = &m->slots[i];
        if (s->val < 0)
            return -1;
        if (s->tag == tag && key_at(keys, s->val) == key)
            return s->val;
        i = (i + 1) & m->mask;
    }
}

/* Insert a key known to be absent (by its tag); room must have been reserved. */
static inline void map_put_tag(Map *m, uint32_t tag, int32_t val)
{
    size_t i = map_home(m, tag);
    while (m->slots[i].val >= 0)
        i = (i + 1) & m->mask;
    m->slots[i].tag = tag;
    m->slots[i].val = val;
    m->used++;
}

static inline void map_put(Map *m, int64_t key, int32_t val)
{
    map_put_tag(m, map_tag(key), val);
}

/* Make room for one more key (load factor <= 1/2). */
static int map_reserve(Map *m)
{
    if ((m->used + 1) * 2 <= m->mask + 1)
        return 0;
    Map bigger;
    if (map_init(&bigger, m->log2cap + 1) < 0)
        return -1;
    for (size_t i = 0; i <= m->mask; i++)
        if (m->slots[i].val >= 0)
            map_put_tag(&bigger, m->slots[i].tag, m->slots[i].val);
    PyMem_Free(m->slots);
    *m = bigger;
    return 0;
}

static void map_del(Map *m, Keys keys, int64_t key)
{
    uint32_t tag = map_tag(key);
    size_t i = map_home(m, tag);
    for (;;) {
        const Slot *s = &m->slots[i];
        if (s->val < 0)
            return;
        if (s->tag == tag && key_at(keys, s->val) == key)
            break;
        i = (i + 1) & m->mask;
    }
    /* Backward shift: pull later entries of the probe run into the hole when the hole
     * lies between their home slot and where they sit now. */
    size_t j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        if (m->slots[j].val < 0)
            break;
        size_t h = map_home(m, m->slots[j].tag);
        if (((j - h) & m->mask) >= ((j - i) & m->mask)) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    m->slots[i].val = -1;
    m->used--;
}

/* ======================================================================================
 * The book.
 * ==================================================================================== */
typedef struct {
    int64_t id, user, price, rem;
    int32_t prev, next; /* FIFO links within the level; next doubles as free-list link */
    int32_t level;
    uint8_t side, stp, live;
} Order;

typedef struct {
    i128 qty; /* total remaining lots of the level's orders */
    int64_t price;
    int32_t head, tail, count; /* head doubles as free-list link */
    uint8_t side, dirty, active;
} Level;

typedef struct {
    int64_t price;
    int32_t level;
} PriceRef;

typedef struct {
    PriceRef *a; /* active levels, worst price first, best at a[n-1] */
    Py_ssize_t n;
    Map prices; /* price -> level, active or (dirty and) empty */
} BookSide;

typedef struct {
    PyObject_HEAD
    PyObject *pair;
    int64_t min_notional, maker_ppm, taker_ppm;
    uint64_t seq, trade_id; /* u64 in the snapshot */
    int trading, busy;
    Order *orders;
    int32_t orders_cap, orders_hw, free_order;
    Level *levels;
    int32_t levels_cap, levels_hw, free_level;
    int32_t *dirty; /* levels changed since take_level_changes(); capacity levels_cap */
    int32_t ndirty;
    BookSide side[2];
    Map ids;
    Py_ssize_t count;
    i128 resting;
} Book;

#define ORDER_KEYS(b) ((Keys){(const char *)&(b)->orders[0].id, sizeof(Order)})
#define LEVEL_KEYS(b) ((Keys){(const char *)&(b)->levels[0].price, sizeof(Level)})

static void storage_free(Book *b)
{
    PyMem_Free(b->orders);
    PyMem_Free(b->levels);
    PyMem_Free(b->dirty);
    PyMem_Free(b->ids.slots);
    for (int s = 0; s < 2; s++) {
        PyMem_Free(b->side[s].a);
        PyMem_Free(b->side[s].prices.slots);
    }
    b->orders = NULL;
    b->levels = NULL;
    b->dirty = NULL;
    b->ids.slots = NULL;
    b->side[0].a = b->side[1].a = NULL;
    b->side[0].prices.slots = b->side[1].prices.slots = NULL;
}

static int storage_init(Book *b)
{
    storage_free(b);
    b->orders_cap = 64;
    b->levels_cap = 16;
    b->orders_hw = b->levels_hw = 0;
    b->free_order = b->free_level = -1;
    b->ndirty = 0;
    b->count = 0;
    b->resting = 0;
    b->orders = PyMem_Malloc(sizeof(Order) * b->orders_cap);
    b->levels = PyMem_Malloc(sizeof(Level) * b->levels_cap);
    b->dirty = PyMem_Malloc(sizeof(int32_t) * b->levels_cap);
    b->side[0].a = PyMem_Malloc(sizeof(PriceRef) * b->levels_cap);
    b->side[1].a = PyMem_Malloc(sizeof(PriceRef) * b->levels_cap);
    b->side[0].n = b->side[1].n = 0;
    if (!b->orders || !b->levels || !b->dirty || !b->side[0].a || !b->side[1].a) {
        PyErr_NoMemory();
        return -1;
    }
    if (map_init(&b->ids, 6) < 0 || map_init(&b->side[0].prices, 4) < 0 ||
        map_init(&b->side[1].prices, 4) < 0)
        return -1;
    return 0;
}

/* ---- pools ---- */
static int32_t order_alloc(Book *b)
{
    if (b->free_order >= 0) {
        int32_t i = b->free_order;
        b->free_order = b->orders[i].next;
        return i;
    }
    if (b->orders_hw == b->orders_cap) {
        if (b->orders_cap > INT32_MAX / 2) {
            PyErr_SetString(PyExc_MemoryError, "order book is full");
            return -1;
        }
        Order *o = PyMem_Realloc(b->orders, sizeof(Order) * (size_t)b->orders_cap * 2);
        if (o == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->orders = o;
        b->orders_cap *= 2;
    }
    return b->orders_hw++;
}

static inline void order_free(Book *b, int32_t i)
{
    b->orders[i].live = 0;
    b->orders[i].next = b->free_order;
    b->free_order = i;
}

/* The dirty list and both sides' active arrays hold at most one entry per level, so
 * they grow with the level pool and pushing onto them never fails. */
static int32_t level_alloc(Book *b)
{
    if (b->free_level >= 0) {
        int32_t i = b->free_level;
        b->free_level = b->levels[i].head;
        return i;
    }
    if (b->levels_hw == b->levels_cap) {
        if (b->levels_cap > INT32_MAX / 2) {
            PyErr_SetString(PyExc_MemoryError, "order book is full");
            return -1;
        }
        size_t cap = (size_t)b->levels_cap * 2;
        Level *l = PyMem_Realloc(b->levels, sizeof(Level) * cap);
        if (l == NULL)
            return PyErr_NoMemory(), -1;
        b->levels = l;
        int32_t *d = PyMem_Realloc(b->dirty, sizeof(int32_t) * cap);
        if (d == NULL)
            return PyErr_NoMemory(), -1;
        b->dirty = d;
        for (int s = 0; s < 2; s++) {
            PriceRef *a = PyMem_Realloc(b->side[s].a, sizeof(PriceRef) * cap);
            if (a == NULL)
                return PyErr_NoMemory(), -1;
            b->side[s].a = a;
        }
        b->levels_cap = (int32_t)cap;
    }
    return b->levels_hw++;
}

static inline void mark_dirty(Book *b, int32_t li)
{
    Level *L = &b->levels[li];
    if (!L->dirty) {
        L->dirty = 1;
        b->dirty[b->ndirty++] = li;
    }
}

/* Is price x worse than price p for this side? (bids: lower; asks: higher) */
static inline int worse(int side, int64_t x, int64_t p)
{
    return side == BUY ? x < p : x > p;
}

/* Index of the first active entry not worse than p. */
static Py_ssize_t side_lower_bound(const BookSide *s, int side, int64_t p)
{
    Py_ssize_t lo = 0, hi = s->n;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) >> 1;
        if (worse(side, s->a[mid].price, p))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void level_activate(Book *b, int32_t li)
{
    Level *L = &b->levels[li];
    BookSide *s = &b->side[L->side];
    Py_ssize_t pos = side_lower_bound(s, L->side, L->price);
    if (pos < s->n)
        memmove(&s->a[pos + 1], &s->a[pos], sizeof(PriceRef) * (size_t)(s->n - pos));
    s->a[pos].price = L->price;
    s->a[pos].level = li;
    s->n++;
    L->active = 1;
}

static void level_deactivate(Book *b, int32_t li)
{
    Level *L = &b->levels[li];
    BookSide *s = &b->side[L->side];
    L->active = 0;
    if (s->a[s->n - 1].level == li) { /* the best level: the matching case */
        s->n--;
        return;
    }
    Py_ssize_t pos = side_lower_bound(s, L->side, L->price);
    memmove(&s->a[pos], &s->a[pos + 1], sizeof(PriceRef) * (size_t)(s->n - pos - 1));
    s->n--;
}

/* The level for (side, price), created empty and inactive if missing. */
static int32_t level_get(Book *b, int side, int64_t price)
{
    Map *m = &b->side[side].prices;
    int32_t li = map_get(m, LEVEL_KEYS(b), price);
    if (li >= 0)
        return li;
    if (map_reserve(m) < 0)
        return -1;
    li = level_alloc(b);
    if (li < 0)
        return -1;
    Level *L = &b->levels[li];
    L->qty = 0;
    L->price = price;
    L->head = L->tail = -1;
    L->count = 0;
    L->side = (uint8_t)side;
    L->dirty = 0;
    L->active = 0;
    map_put(m, price, li);
    return li;
}

/* Append a filled-in order slot to the back of its level. */
static void level_push(Book *b, int32_t oi, int32_t li)
{
    Order *o = &b->orders[oi];
    Level *L = &b->levels[li];
    o->level = li;
    o->next = -1;
    o->prev = L->tail;
    if (L->tail >= 0)
        b->orders[L->tail].next = oi;
    else
        L->head = oi;
    L->tail = oi;
    L->count++;
    L->qty += o->rem;
    mark_dirty(b, li);
    if (!L->active)
        level_activate(b, li);
}

/* Take an order out of its level's queue (the order slot stays). */
static void level_unlink(Book *b, int32_t oi)
{
    Order *o = &b->orders[oi];
    int32_t li = o->level;
    Level *L = &b->levels[li];
    if (o->prev >= 0)
        b->orders[o->prev].next = o->next;
    else
        L->head = o->next;
    if (o->next >= 0)
        b->orders[o->next].prev = o->prev;
    else
        L->tail = o->prev;
    L->count--;
    L->qty -= o->rem;
    mark_dirty(b, li);
    if (L->count == 0)
        level_deactivate(b, li);
}

/* Rest a new order; on failure nothing has changed. */
static int rest(Book *b, int64_t id, int64_t user, int side, int64_t price, int64_t rem, int stp)
{
    if (map_reserve(&b->ids) < 0)
        return -1;
    int32_t oi = order_alloc(b);
    if (oi < 0)
        return -1;
    int32_t li = level_get(b, side, price);
    if (li < 0) {
        order_free(b, oi); /* give the slot back */
        return -1;
    }
    Order *o = &b->orders[oi];
    o->id = id;
    o->user = user;
    o->price = price;
    o->rem = rem;
    o->side = (uint8_t)side;
    o->stp = (uint8_t)stp;
    o->live = 1;
    level_push(b, oi, li);
    map_put(&b->ids, id, oi);
    b->count++;
    b->resting += rem;
    return 0;
}

/* Remove a resting order from the book entirely. */
static void order_remove(Book *b, int32_t oi)
{
    Order *o = &b->orders[oi];
    b->resting -= o->rem;
    level_unlink(b, oi);
    map_del(&b->ids, ORDER_KEYS(b), o->id);
    order_free(b, oi);
    b->count--;
}

/* ======================================================================================
 * Python values.
 * ==================================================================================== */
static PyObject *long_from_i128(i128 v)
{
    if (v >= INT64_MIN && v <= INT64_MAX)
        return PyLong_FromLongLong((long long)v);
    PyObject *hi = PyLong_FromLongLong((long long)(v >> 64));
    PyObject *lo = PyLong_FromUnsignedLongLong((unsigned long long)(uint64_t)v);
    PyObject *sixty_four = PyLong_FromLong(64);
    PyObject *shifted = NULL, *res = NULL;
    if (hi && lo && sixty_four && (shifted = PyNumber_Lshift(hi, sixty_four)))
        res = PyNumber_Add(shifted, lo);
    Py_XDECREF(hi);
    Py_XDECREF(lo);
    Py_XDECREF(sixty_four);
    Py_XDECREF(shifted);
    return res;
}

/* fee = ceil(price * qty * rate / 1e6), exactly as engine.domain.fee. */
static PyObject *fee_obj(int64_t price, int64_t qty, int64_t rate)
{
    if (rate == 0)
        return PyLong_FromLong(0);
    i128 n = (i128)price * qty, x;
    if (__builtin_mul_overflow(n, (i128)rate, &x))
        return PyObject_CallFunction(fee_fn, "LLL", (long long)price, (long long)qty,
                                     (long long)rate);
    i128 q = x / 1000000;
    if (x % 1000000 > 0) /* C division truncates: for x > 0 that is the floor */
        q += 1;
    return long_from_i128(q);
}

/* A command argument: the object as given and its int64 value. */
typedef struct {
    PyObject *o;
    int64_t v;
} Arg;

/* Most command fields are small exact ints: read them without a call. */
static inline int small_int(PyObject *o, int64_t *v)
{
#if PY_VERSION_HEX >= 0x030C0000
    if (PyLong_CheckExact(o) && PyUnstable_Long_IsCompact((PyLongObject *)o)) {
        *v = (int64_t)PyUnstable_Long_CompactValue((PyLongObject *)o);
        return 1;
    }
#else
    if (PyLong_CheckExact(o)) {
        Py_ssize_t size = Py_SIZE(o);
        if (size >= -1 && size <= 1) {
            *v = size * (int64_t)((PyLongObject *)o)->ob_digit[0];
            return 1;
        }
    }
#endif
    return 0;
}

static int arg_load(Arg *a, PyObject *o, const char *name)
{
    a->o = o;
    if (small_int(o, &a->v))
        return 0;
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", name, Py_TYPE(o)->tp_name);
        return -1;
    }
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    a->o = o;
    a->v = v;
    return 0;
}

/* Enum fields: a value out of range (however large) is a malformed request, not an
 * overflow, so it maps to -1 and the book rejects it like the pure one does. */
static int enum_load(Arg *a, PyObject *o, const char *name)
{
    a->o = o;
    if (small_int(o, &a->v)) {
        if (a->v < 0 || a->v > 3)
            a->v = -1;
        return 0;
    }
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", name, Py_TYPE(o)->tp_name);
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    a->o = o;
    a->v = (overflow || v < 0 || v > 3) ? -1 : v;
    return 0;
}

/* New reference to the argument as a plain int (an IntEnum member becomes its value). */
static inline PyObject *arg_int(const Arg *a)
{
    if (PyLong_CheckExact(a->o)) {
        Py_INCREF(a->o);
        return a->o;
    }
    return PyLong_FromLongLong(a->v);
}

#define I64(x) PyLong_FromLongLong((long long)(x))

/* ---- events ---- */
typedef struct {
    Book *b;
    PyObject *out; /* list the events are appended to */
    PyObject *ts;  /* plain int */
} Ctx;

/* Build one event: pair, next seq, ts, then the n values (new references, stolen; any
 * NULL means an error is already set). */
static int emit(Ctx *c, PyTypeObject *t, int n, PyObject **v)
{
    for (int i = 0; i < n; i++)
        if (v[i] == NULL)
            goto fail;
    PyObject *seq = PyLong_FromUnsignedLongLong(c->b->seq + 1);
    if (seq == NULL)
        goto fail;
    PyObject *e = t->tp_alloc(t, n + 3);
    if (e == NULL) {
        Py_DECREF(seq);
        goto fail;
    }
    c->b->seq++;
    Py_INCREF(c->b->pair);
    PyTuple_SET_ITEM(e, 0, c->b->pair);
    PyTuple_SET_ITEM(e, 1, seq);
    Py_INCREF(c->ts);
    PyTuple_SET_ITEM(e, 2, c->ts);
    for (int i = 0; i < n; i++)
        PyTuple_SET_ITEM(e, 3 + i, v[i]);
    /* Only ints, bools and a str inside: it can never be part of a cycle, so keep it out
     * of the collector's walks (CPython untracks such plain tuples itself, lazily). */
    PyObject_GC_UnTrack(e);
    int r = PyList_Append(c->out, e);
    Py_DECREF(e);
    return r;
fail:
    for (int i = 0; i < n; i++)
        Py_XDECREF(v[i]);
    return -1;
}

static int ev_rejected(Ctx *c, const Arg *oid, const Arg *uid, int code)
{
    PyObject *v[3] = {arg_int(oid), arg_int(uid), PyLong_FromLong(code)};
    return emit(c, T_Rejected, 3, v);
}

static int ev_done(Ctx *c, PyObject *oid, PyObject *uid)
{
    PyObject *v[2] = {oid, uid};
    return emit(c, T_Done, 2, v);
}

static int ev_leave(Ctx *c, PyTypeObject *t, PyObject *oid, PyObject *uid, PyObject *left,
                    int reason)
{
    PyObject *v[4] = {oid, uid, left, PyLong_FromLong(reason)};
    return emit(c, t, 4, v);
}

static int ev_amended(Ctx *c, const Arg *oid, const Arg *uid, const Arg *price, const Arg *qty,
                      int kept)
{
    PyObject *flag = kept ? Py_True : Py_False;
    Py_INCREF(flag);
    PyObject *v[5] = {arg_int(oid), arg_int(uid), arg_int(price), arg_int(qty), flag};
    return emit(c, T_Amended, 5, v);
}

static int ctx_open(Ctx *c, Book *b, PyObject *out, const Arg *ts)
{
    c->b = b;
    c->out = out;
    c->ts = arg_int(ts);
    return c->ts ? 0 : -1;
}

/* ======================================================================================
 * Commands.
 * ==================================================================================== */
enum { P_OID, P_UID, P_SIDE, P_KIND, P_TIF, P_PRICE, P_QTY, P_QUOTE, P_STP, P_TS, P_N };
static const char *const place_names[] = {"order_id", "user_id", "side", "kind", "tif",
                                          "price", "qty", "quote_qty", "stp", "ts"};

static int load_place(Arg *a, PyObject *const *o)
{
    for (int i = 0; i < P_N; i++) {
        int enum_field = i == P_SIDE || i == P_KIND || i == P_TIF || i == P_STP;
        if ((enum_field ? enum_load : arg_load)(&a[i], o[i], place_names[i]) < 0)
            return -1;
    }
    return 0;
}

static inline int crosses(Book *b, int side, int64_t price)
{
    BookSide *opp = &b->side[!side];
    if (opp->n == 0)
        return 0;
    int64_t best = opp->a[opp->n - 1].price;
    return side == BUY ? price >= best : price <= best;
}

/* Could a FOK order fill entirely? A dry run of the matching walk. */
static int fillable(Book *b, int side, int64_t price, int64_t qty, int64_t user, int stp)
{
    BookSide *opp = &b->side[!side];
    i128 need = qty;
    for (Py_ssize_t i = opp->n - 1; i >= 0; i--) {
        int64_t lp = opp->a[i].price;
        if (side == BUY ? lp > price : lp < price)
            return 0;
        Level *L = &b->levels[opp->a[i].level];
        if (stp == STP_NONE) {
            need -= L->qty;
            if (need <= 0)
                return 1;
            continue;
        }
        for (int32_t oi = L->head; oi >= 0; oi = b->orders[oi].next) {
            const Order *m = &b->orders[oi];
            if (m->user == user) {
                if (stp == EXPIRE_MAKER)
                    continue;
                return 0;
            }
            need -= m->rem;
            if (need <= 0)
                return 1;
        }
    }
    return 0;
}

/* The first failing validation step's code, or 0 (domain.py steps 1-7). */
static int check_place(Book *b, const Arg *a)
{
    if (!b->trading)
        return RC_MARKET_CLOSED;
    if (map_get(&b->ids, ORDER_KEYS(b), a[P_OID].v) >= 0)
        return RC_DUPLICATE_ORDER_ID;
    int side = (int)a[P_SIDE].v, kind = (int)a[P_KIND].v, tif = (int)a[P_TIF].v;
    /* Not a numbered step: an enum out of range is a malformed request. */
    if (side < 0 || side > 1 || kind < 0 || kind > 2 || tif < 0 || tif > 2 || a[P_STP].v < 0)
        return RC_INVALID_REQUEST;
    int64_t price = a[P_PRICE].v, qty = a[P_QTY].v, quote = a[P_QUOTE].v;
    if (kind == MARKET) {
        if (price < 0)
            return RC_INVALID_PRICE;
        if (!((qty > 0 && quote == 0) || (quote > 0 && qty == 0)))
            return RC_INVALID_QUANTITY;
        if (quote && quote < b->min_notional)
            return RC_BELOW_MIN_NOTIONAL;
        return 0;
    }
    if (price <= 0)
        return RC_INVALID_PRICE;
    if (qty <= 0 || quote != 0)
        return RC_INVALID_QUANTITY;
    if ((i128)price * qty < b->min_notional)
        return RC_BELOW_MIN_NOTIONAL;
    if (kind == LIMIT_MAKER) {
        if (crosses(b, side, price))
            return RC_POST_ONLY_WOULD_CROSS;
    } else if (tif == FOK && !fillable(b, side, price, qty, a[P_UID].v, (int)a[P_STP].v)) {
        return RC_FOK_NOT_FILLABLE;
    }
    return 0;
}

static int do_place(Book *b, PyObject *out, const Arg *a)
{
    Ctx c;
    if (ctx_open(&c, b, out, &a[P_TS]) < 0)
        return -1;
    int r = -1;
    int code = check_place(b, a);
    if (code) {
        r = ev_rejected(&c, &a[P_OID], &a[P_UID], code);
        goto done;
    }
    int side = (int)a[P_SIDE].v, kind = (int)a[P_KIND].v, tif = (int)a[P_TIF].v;
    int stp = (int)a[P_STP].v;
    int64_t price = a[P_PRICE].v, user = a[P_UID].v;
    {
        PyObject *v[8] = {arg_int(&a[P_OID]), arg_int(&a[P_UID]), PyLong_FromLong(side),
                          PyLong_FromLong(kind), PyLong_FromLong(tif), arg_int(&a[P_PRICE]),
                          arg_int(&a[P_QTY]), arg_int(&a[P_QUOTE])};
        if (emit(&c, T_Accepted, 8, v) < 0)
            goto done;
    }
    if (kind == LIMIT_MAKER) { /* validated not to cross: it only rests */
        r = rest(b, a[P_OID].v, user, side, price, a[P_QTY].v, stp);
        goto done;
    }
    int by_quote = kind == MARKET && a[P_QUOTE].v > 0;
    int64_t left = by_quote ? a[P_QUOTE].v : a[P_QTY].v;
    BookSide *opp = &b->side[!side];
    while (left > 0 && opp->n > 0) {
        int64_t lp = opp->a[opp->n - 1].price;
        if (price && (side == BUY ? lp > price : lp < price))
            break;
        int32_t li = opp->a[opp->n - 1].level;
        int32_t mi = b->levels[li].head;
        Order *m = &b->orders[mi];
        if (stp != STP_NONE && m->user == user) {
            if (stp != EXPIRE_TAKER) {
                if (ev_leave(&c, T_Expired, I64(m->id), I64(m->user), I64(m->rem), SELF_TRADE) < 0)
                    goto done;
                order_remove(b, mi);
                if (stp == EXPIRE_MAKER)
                    continue;
            }
            r = ev_leave(&c, T_Expired, arg_int(&a[P_OID]), arg_int(&a[P_UID]), I64(left),
                         SELF_TRADE);
            goto done; /* the taker is gone: no Done, no rest */
        }
        int64_t traded;
        if (by_quote) {
            traded = left / lp;
            if (traded == 0)
                break;
            if (traded > m->rem)
                traded = m->rem;
            left -= traded * lp;
        } else {
            traded = left < m->rem ? left : m->rem;
            left -= traded;
        }
        m->rem -= traded;
        b->levels[li].qty -= traded;
        b->resting -= traded;
        mark_dirty(b, li);
        b->trade_id++;
        {
            PyObject *v[10] = {PyLong_FromUnsignedLongLong(b->trade_id), I64(lp), I64(traded),
                               PyLong_FromLong(side), I64(m->id), I64(m->user),
                               arg_int(&a[P_OID]), arg_int(&a[P_UID]),
                               fee_obj(lp, traded, b->maker_ppm),
                               fee_obj(lp, traded, b->taker_ppm)};
            if (emit(&c, T_Trade, 10, v) < 0)
                goto done;
        }
        m = &b->orders[mi];
        if (m->rem == 0) {
            int64_t mid = m->id, muser = m->user;
            order_remove(b, mi);
            if (ev_done(&c, I64(mid), I64(muser)) < 0)
                goto done;
        }
    }
    if (left == 0)
        r = ev_done(&c, arg_int(&a[P_OID]), arg_int(&a[P_UID]));
    else if (kind == LIMIT && tif == GTC)
        r = rest(b, a[P_OID].v, user, side, price, left, stp);
    else
        r = ev_leave(&c, T_Expired, arg_int(&a[P_OID]), arg_int(&a[P_UID]), I64(left),
                     kind == LIMIT ? IOC_REMAINDER : NO_LIQUIDITY);
done:
    Py_DECREF(c.ts);
    return r;
}

/* The resting order `oid` if `uid` owns it, else -1. */
static inline int32_t owned(Book *b, int64_t oid, int64_t uid)
{
    int32_t oi = map_get(&b->ids, ORDER_KEYS(b), oid);
    return (oi >= 0 && b->orders[oi].user == uid) ? oi : -1;
}

static int do_cancel(Book *b, PyObject *out, const Arg *oid, const Arg *uid, const Arg *ts)
{
    Ctx c;
    if (ctx_open(&c, b, out, ts) < 0)
        return -1;
    int r;
    int32_t oi = owned(b, oid->v, uid->v);
    if (oi < 0) {
        r = ev_rejected(&c, oid, uid, RC_UNKNOWN_ORDER);
    } else {
        int64_t rem = b->orders[oi].rem;
        order_remove(b, oi);
        r = ev_leave(&c, T_Cancelled, arg_int(oid), arg_int(uid), I64(rem), CANCELED);
    }
    Py_DECREF(c.ts);
    return r;
}

static int amend_code(Book *b, int32_t oi, int64_t price, int64_t qty)
{
    if (oi < 0)
        return RC_UNKNOWN_ORDER;
    if (price <= 0)
        return RC_INVALID_PRICE;
    if (qty <= 0)
        return RC_INVALID_QUANTITY;
    if ((i128)price * qty < b->min_notional)
        return RC_BELOW_MIN_NOTIONAL;
    if (crosses(b, b->orders[oi].side, price))
        return RC_AMEND_WOULD_CROSS;
    /* Never enlarge: accounts' hold cannot see fills in flight (domain.py, amend). */
    const Order *o = &b->orders[oi];
    if (qty > o->rem || (o->side == BUY && (i128)price * qty > (i128)o->price * o->rem))
        return RC_AMEND_WOULD_ENLARGE;
    return 0;
}

static int do_amend(Book *b, PyObject *out, const Arg *oid, const Arg *uid, const Arg *price,
                    const Arg *qty, const Arg *ts)
{
    Ctx c;
    if (ctx_open(&c, b, out, ts) < 0)
        return -1;
    int r;
    int32_t oi = owned(b, oid->v, uid->v);
    int code = b->trading ? amend_code(b, oi, price->v, qty->v) : RC_MARKET_CLOSED;
    if (code) {
        r = ev_rejected(&c, oid, uid, code);
        goto done;
    }
    Order *o = &b->orders[oi];
    int kept = price->v == o->price; /* amend_code refused qty > rem */
    if (kept) {
        int64_t reduced = o->rem - qty->v;
        if (reduced) {
            o->rem = qty->v;
            b->levels[o->level].qty -= reduced;
            b->resting -= reduced;
            mark_dirty(b, o->level);
        }
    } else {
        /* Make sure the target level exists before touching anything, so a failed
         * allocation leaves the order where it was. */
        int32_t li = level_get(b, o->side, price->v);
        if (li < 0) {
            r = -1;
            goto done;
        }
        o = &b->orders[oi];
        b->resting -= o->rem;
        level_unlink(b, oi);
        o->price = price->v;
        o->rem = qty->v;
        b->resting += o->rem;
        level_push(b, oi, li);
    }
    r = ev_amended(&c, oid, uid, price, qty, kept);
done:
    Py_DECREF(c.ts);
    return r;
}

static int cmp_order_id(const void *x, const void *y)
{
    int64_t a = ((const int64_t *)x)[0], b = ((const int64_t *)y)[0];
    return (a > b) - (a < b);
}

static int do_cancel_all(Book *b, PyObject *out, const Arg *uid, const Arg *ts)
{
    /* A scan rather than a per-user index: cancel_all is rare, place is the hot path. */
    Py_ssize_t n = 0;
    for (int32_t i = 0; i < b->orders_hw; i++)
        n += b->orders[i].live && b->orders[i].user == uid->v;
    if (n == 0)
        return 0;
    int64_t *ids = PyMem_Malloc(sizeof(int64_t) * (size_t)n);
    if (ids == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    n = 0;
    for (int32_t i = 0; i < b->orders_hw; i++)
        if (b->orders[i].live && b->orders[i].user == uid->v)
            ids[n++] = b->orders[i].id;
    qsort(ids, (size_t)n, sizeof(int64_t), cmp_order_id);
    Ctx c;
    int r = ctx_open(&c, b, out, ts);
    for (Py_ssize_t k = 0; r == 0 && k < n; k++) {
        int32_t oi = map_get(&b->ids, ORDER_KEYS(b), ids[k]);
        int64_t rem = b->orders[oi].rem;
        order_remove(b, oi);
        r = ev_leave(&c, T_Cancelled, I64(ids[k]), arg_int(uid), I64(rem), CANCEL_ALL);
    }
    PyMem_Free(ids);
    Py_XDECREF(c.ts);
    return r;
}

static int do_set_trading(Book *b, PyObject *out, PyObject *trading, const Arg *ts)
{
    int t = PyObject_IsTrue(trading);
    if (t < 0)
        return -1;
    Ctx c;
    if (ctx_open(&c, b, out, ts) < 0)
        return -1;
    b->trading = t;
    PyObject *flag = t ? Py_True : Py_False;
    Py_INCREF(flag);
    PyObject *v[1] = {flag};
    int r = emit(&c, T_MarketStatus, 1, v);
    Py_DECREF(c.ts);
    return r;
}

static inline void prefetch_id_slot(Book *b, PyObject *order_id)
{
    if (PyLong_CheckExact(order_id)) {
        int overflow;
        long long id = PyLong_AsLongLongAndOverflow(order_id, &overflow);
        if (!overflow) /* an overflowing id fails properly when it is loaded */
            __builtin_prefetch(&b->ids.slots[map_home(&b->ids, map_tag(id))]);
    }
}

/* Dispatch one engine.domain command tuple, appending its events to out. */
static int apply_one(Book *b, PyObject *cmd, PyObject *out)
{
    PyTypeObject *t = Py_TYPE(cmd);
    PyObject **f = PyTuple_Check(cmd) ? ((PyTupleObject *)cmd)->ob_item : NULL;
    Py_ssize_t n = f ? PyTuple_GET_SIZE(cmd) : -1;
    Arg a[P_N];
    /* The command's int objects and the id's map slot are usually cache misses (the
     * command was built long ago, ids hash all over the map): start them all at once. */
    for (Py_ssize_t i = 1; i < n && i < 12; i++)
        __builtin_prefetch(f[i]);
    if (t == T_Place || (f && PyType_IsSubtype(t, T_Place))) {
        if (n != 11)
            goto bad;
        prefetch_id_slot(b, f[1]);
        if (load_place(a, f + 1) < 0)
            goto bad;
        return do_place(b, out, a);
    }
    if (t == T_Cancel || (f && PyType_IsSubtype(t, T_Cancel))) {
        if (n == 4)
            prefetch_id_slot(b, f[1]);
        if (n != 4 || arg_load(&a[0], f[1], "order_id") < 0 ||
            arg_load(&a[1], f[2], "user_id") < 0 || arg_load(&a[2], f[3], "ts") < 0)
            goto bad;
        return do_cancel(b, out, &a[0], &a[1], &a[2]);
    }
    if (t == T_Amend || (f && PyType_IsSubtype(t, T_Amend))) {
        if (n != 6 || arg_load(&a[0], f[1], "order_id") < 0 ||
            arg_load(&a[1], f[2], "user_id") < 0 || arg_load(&a[2], f[3], "new_price") < 0 ||
            arg_load(&a[3], f[4], "new_qty") < 0 || arg_load(&a[4], f[5], "ts") < 0)
            goto bad;
        return do_amend(b, out, &a[0], &a[1], &a[2], &a[3], &a[4]);
    }
    if (t == T_CancelAll || (f && PyType_IsSubtype(t, T_CancelAll))) {
        if (n != 3 || arg_load(&a[0], f[1], "user_id") < 0 || arg_load(&a[1], f[2], "ts") < 0)
            goto bad;
        return do_cancel_all(b, out, &a[0], &a[1]);
    }
    if (t == T_SetTrading || (f && PyType_IsSubtype(t, T_SetTrading))) {
        if (n != 3 || arg_load(&a[0], f[2], "ts") < 0)
            goto bad;
        return do_set_trading(b, out, f[1], &a[0]);
    }
    PyErr_Format(PyExc_TypeError, "not an engine command: %.100s", t->tp_name);
    return -1;
bad:
    if (!PyErr_Occurred())
        PyErr_Format(PyExc_TypeError, "malformed %.100s command", t->tp_name);
    return -1;
}

/* ======================================================================================
 * Python methods.
 * ==================================================================================== */

/* Positional-or-keyword arguments for a METH_FASTCALL|METH_KEYWORDS method. */
static int parse_args(const char *fn, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames, int n, const char *const *names, PyObject **out)
{
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes %d arguments (%zd given)", fn, n, nargs);
        return -1;
    }
    for (int i = 0; i < n; i++)
        out[i] = i < nargs ? args[i] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int i = 0;
        while (i < n && PyUnicode_CompareWithASCIIString(name, names[i]) != 0)
            i++;
        if (i == n) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", fn, name);
            return -1;
        }
        if (out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fn,
                         names[i]);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    for (int i = 0; i < n; i++)
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing argument '%s'", fn, names[i]);
            return -1;
        }
    return 0;
}

/* Mutating methods refuse to run re-entrantly (a finaliser triggered by an allocation
 * mid-command calling back into the book). Returns the list for the events. */
static PyObject *begin(Book *b)
{
    if (b->busy) {
        PyErr_SetString(PyExc_RuntimeError, "OrderBook is busy (re-entrant call)");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out != NULL)
        b->busy = 1;
    return out;
}

/* Finish a command: the list of events, or NULL with the error. */
static PyObject *finish(Book *b, PyObject *out, int r)
{
    b->busy = 0;
    if (r < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *Book_place(Book *b, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    PyObject *o[P_N];
    Arg a[P_N];
    if (parse_args("place", args, nargs, kw, P_N, place_names, o) < 0 || load_place(a, o) < 0)
        return NULL;
    PyObject *out = begin(b);
    if (out == NULL)
        return NULL;
    return finish(b, out, do_place(b, out, a));
}

static PyObject *Book_cancel(Book *b, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    static const char *const names[] = {"order_id", "user_id", "ts"};
    PyObject *o[3];
    Arg a[3];
    if (parse_args("cancel", args, nargs, kw, 3, names, o) < 0)
        return NULL;
    for (int i = 0; i < 3; i++)
        if (arg_load(&a[i], o[i], names[i]) < 0)
            return NULL;
    PyObject *out = begin(b);
    if (out == NULL)
        return NULL;
    return finish(b, out, do_cancel(b, out, &a[0], &a[1], &a[2]));
}

static PyObject *Book_amend(Book *b, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    static const char *const names[] = {"order_id", "user_id", "new_price", "new_qty", "ts"};
    PyObject *o[5];
    Arg a[5];
    if (parse_args("amend", args, nargs, kw, 5, names, o) < 0)
        return NULL;
    for (int i = 0; i < 5; i++)
        if (arg_load(&a[i], o[i], names[i]) < 0)
            return NULL;
    PyObject *out = begin(b);
    if (out == NULL)
        return NULL;
    return finish(b, out, do_amend(b, out, &a[0], &a[1], &a[2], &a[3], &a[4]));
}

static PyObject *Book_cancel_all(Book *b, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    static const char *const names[] = {"user_id", "ts"};
    PyObject *o[2];
    Arg a[2];
    if (parse_args("cancel_all", args, nargs, kw, 2, names, o) < 0 ||
        arg_load(&a[0], o[0], names[0]) < 0 || arg_load(&a[1], o[1], names[1]) < 0)
        return NULL;
    PyObject *out = begin(b);
    if (out == NULL)
        return NULL;
    return finish(b, out, do_cancel_all(b, out, &a[0], &a[1]));
}

static PyObject *Book_set_trading(Book *b, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kw)
{
    static const char *const names[] = {"trading", "ts"};
    PyObject *o[2];
    Arg ts;
    if (parse_args("set_trading", args, nargs, kw, 2, names, o) < 0 ||
        arg_load(&ts, o[1], names[1]) < 0)
        return NULL;
    PyObject *out = begin(b);
    if (out == NULL)
        return NULL;
    return finish(b, out, do_set_trading(b, out, o[0], &ts));
}

static PyObject *Book_apply(Book *b, PyObject *cmd)
{
    PyObject *out = begin(b);
    if (out == NULL)
        return NULL;
    return finish(b, out, apply_one(b, cmd, out));
}

static PyObject *Book_apply_many(Book *b, PyObject *cmds)
{
    PyObject *it = PyObject_GetIter(cmds);
    if (it == NULL)
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        Py_DECREF(it);
        return NULL;
    }
    int r = 0;
    PyObject *cmd;
    /* The iterator runs Python code (a generator), so the book is only marked busy
     * around each command. */
    while ((cmd = PyIter_Next(it)) != NULL) {
        if (b->busy) {
            PyErr_SetString(PyExc_RuntimeError, "OrderBook is busy (re-entrant call)");
            r = -1;
        } else {
            b->busy = 1;
            r = apply_one(b, cmd, out);
            b->busy = 0;
        }
        Py_DECREF(cmd);
        if (r < 0)
            break;
    }
    Py_DECREF(it);
    if (r < 0 || PyErr_Occurred()) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* ---- queries ---- */
static PyObject *best_of(Book *b, int side)
{
    BookSide *s = &b->side[side];
    if (s->n == 0)
        Py_RETURN_NONE;
    return I64(s->a[s->n - 1].price);
}

static PyObject *Book_best_bid(Book *b, PyObject *Py_UNUSED(x)) { return best_of(b, BUY); }
static PyObject *Book_best_ask(Book *b, PyObject *Py_UNUSED(x)) { return best_of(b, SELL); }

static PyObject *side_depth(Book *b, int side, Py_ssize_t n)
{
    BookSide *s = &b->side[side];
    if (n > s->n)
        n = s->n;
    if (n < 0)
        n = 0;
    PyObject *list = PyList_New(n);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        const PriceRef *p = &s->a[s->n - 1 - k];
        PyObject *price = I64(p->price), *qty = long_from_i128(b->levels[p->level].qty);
        PyObject *t = (price && qty) ? PyTuple_Pack(2, price, qty) : NULL;
        Py_XDECREF(price);
        Py_XDECREF(qty);
        if (t == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, k, t);
    }
    return list;
}

static PyObject *Book_depth(Book *b, PyObject *arg)
{
    Py_ssize_t n = PyNumber_AsSsize_t(arg, NULL); /* clamped, like a slice bound */
    if (n == -1 && PyErr_Occurred())
        return NULL;
    /* Python slicing semantics of the pure book: keys[:n] with n < 0 drops from the end. */
    PyObject *bids = side_depth(b, BUY, n >= 0 ? n : b->side[BUY].n + n);
    PyObject *asks = side_depth(b, SELL, n >= 0 ? n : b->side[SELL].n + n);
    PyObject *res = (bids && asks) ? PyTuple_Pack(2, bids, asks) : NULL;
    Py_XDECREF(bids);
    Py_XDECREF(asks);
    return res;
}

typedef struct {
    i128 qty;
    int64_t price;
    int side;
} Change;

static int cmp_change(const void *x, const void *y)
{
    const Change *a = x, *b = y;
    if (a->side != b->side)
        return a->side - b->side;
    return (a->price > b->price) - (a->price < b->price);
}

static PyObject *Book_take_level_changes(Book *b, PyObject *Py_UNUSED(x))
{
    int32_t n = b->ndirty;
    Change *ch = PyMem_Malloc(sizeof(Change) * (size_t)(n ? n : 1));
    if (ch == NULL)
        return PyErr_NoMemory();
    for (int32_t i = 0; i < n; i++) {
        const Level *L = &b->levels[b->dirty[i]];
        ch[i].qty = L->qty;
        ch[i].price = L->price;
        ch[i].side = L->side;
    }
    qsort(ch, (size_t)n, sizeof(Change), cmp_change);
    PyObject *list = PyList_New(n);
    for (int32_t i = 0; list && i < n; i++) {
        PyObject *qty = long_from_i128(ch[i].qty);
        PyObject *t = qty ? Py_BuildValue("(iLN)", ch[i].side, (long long)ch[i].price, qty) : NULL;
        if (t == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, t);
    }
    PyMem_Free(ch);
    if (list == NULL) /* nothing cleared: the changes are still there for a retry */
        return NULL;
    for (int32_t i = 0; i < n; i++) {
        int32_t li = b->dirty[i];
        Level *L = &b->levels[li];
        L->dirty = 0;
        if (L->count == 0) { /* gone: forget the level */
            map_del(&b->side[L->side].prices, LEVEL_KEYS(b), L->price);
            L->head = b->free_level;
            b->free_level = li;
        }
    }
    b->ndirty = 0;
    return list;
}

static PyObject *Book_order(Book *b, PyObject *arg)
{
    Arg a;
    if (arg_load(&a, arg, "order_id") < 0) {
        /* an id beyond int64 cannot be resting */
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        return NULL;
    }
    int32_t oi = map_get(&b->ids, ORDER_KEYS(b), a.v);
    if (oi < 0)
        Py_RETURN_NONE;
    const Order *o = &b->orders[oi];
    return Py_BuildValue("(LiLLi)", (long long)o->user, o->side, (long long)o->price,
                         (long long)o->rem, o->stp);
}

/* Visit resting orders in snapshot order: bids best first, then asks best first, FIFO. */
#define FOR_EACH_ORDER(b, o)                                                              \
    for (int s_ = 0; s_ < 2; s_++)                                                        \
        for (Py_ssize_t k_ = (b)->side[s_].n - 1; k_ >= 0; k_--)                          \
            for (int32_t oi_ = (b)->levels[(b)->side[s_].a[k_].level].head;               \
                 oi_ >= 0 && ((o) = &(b)->orders[oi_]); oi_ = (o)->next)

static PyObject *Book_orders(Book *b, PyObject *Py_UNUSED(x))
{
    PyObject *list = PyList_New(b->count);
    if (list == NULL)
        return NULL;
    Py_ssize_t i = 0;
    const Order *o;
    FOR_EACH_ORDER(b, o) {
        PyObject *t = Py_BuildValue("(LLiLLi)", (long long)o->id, (long long)o->user, o->side,
                                    (long long)o->price, (long long)o->rem, o->stp);
        if (t == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i++, t);
    }
    return list;
}

static PyObject *Book_resting_qty(Book *b, PyObject *Py_UNUSED(x))
{
    return long_from_i128(b->resting);
}

static Py_ssize_t Book_len(Book *b) { return b->count; }

/* ---- snapshot section ---- */
static inline void put_le(unsigned char **p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        *(*p)++ = (unsigned char)(v >> (8 * i));
}

static inline uint64_t get_le(const unsigned char **p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)(*(*p)++) << (8 * i);
    return v;
}

static PyObject *Book_dump(Book *b, PyObject *Py_UNUSED(x))
{
    Py_ssize_t plen;
    const char *name = PyUnicode_AsUTF8AndSize(b->pair, &plen);
    if (name == NULL)
        return NULL;
    if (b->count > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "too many orders for a snapshot section");
        return NULL;
    }
    Py_ssize_t size = 2 + plen + 1 + 8 + 8 + 4 + b->count * RECORD_SIZE;
    PyObject *res = PyBytes_FromStringAndSize(NULL, size);
    if (res == NULL)
        return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(res);
    put_le(&p, (uint64_t)plen, 2);
    memcpy(p, name, (size_t)plen);
    p += plen;
    put_le(&p, (uint64_t)(b->trading != 0), 1);
    put_le(&p, b->seq, 8);
    put_le(&p, b->trade_id, 8);
    put_le(&p, (uint64_t)b->count, 4);
    const Order *o;
    FOR_EACH_ORDER(b, o) {
        put_le(&p, (uint64_t)o->id, 8);
        put_le(&p, (uint64_t)o->user, 8);
        put_le(&p, o->side, 1);
        put_le(&p, (uint64_t)o->price, 8);
        put_le(&p, (uint64_t)o->rem, 8);
        put_le(&p, o->stp, 1);
    }
    return res;
}

static PyObject *snapshot_error(const char *fmt, ...)
{
    va_list va;
    va_start(va, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    if (msg != NULL) {
        PyErr_SetObject(SnapshotError, msg);
        Py_DECREF(msg);
    }
    return NULL;
}

/* Fill a fresh book from a section's records, checking what engine.snapshot checks. */
static PyObject *load_records(Book *b, const unsigned char *p, uint32_t n)
{
    int prev_side = 0;
    int64_t prev_price = 0;
    for (uint32_t k = 0; k < n; k++) {
        int64_t id = (int64_t)get_le(&p, 8), user = (int64_t)get_le(&p, 8);
        int side = (int)get_le(&p, 1);
        int64_t price = (int64_t)get_le(&p, 8), rem = (int64_t)get_le(&p, 8);
        int stp = (int)get_le(&p, 1);
        if (side > 1 || stp > 3 || price <= 0 || rem <= 0)
            return snapshot_error("%U: order %lld has an invalid record", b->pair, (long long)id);
        if (map_get(&b->ids, ORDER_KEYS(b), id) >= 0)
            return snapshot_error("%U: order %lld appears twice", b->pair, (long long)id);
        if (side < prev_side || (side == prev_side && k > 0 && worse(side, prev_price, price)))
            return snapshot_error("%U: order %lld is out of book order", b->pair, (long long)id);
        prev_side = side;
        prev_price = price;
        if (rest(b, id, user, side, price, rem, stp) < 0)
            return NULL;
    }
    /* a restored book starts with no pending level changes */
    for (int32_t i = 0; i < b->ndirty; i++)
        b->levels[b->dirty[i]].dirty = 0;
    b->ndirty = 0;
    return (PyObject *)b;
}

static PyObject *Book_restore(PyObject *cls, PyObject *args, PyObject *kw)
{
    static char *names[] = {"section", "min_notional", "maker_fee_ppm", "taker_fee_ppm", NULL};
    Py_buffer buf;
    long long mn = 0, mk = 0, tk = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|LLL:restore", names, &buf, &mn, &mk, &tk))
        return NULL;
    const unsigned char *p = buf.buf, *end = p + buf.len;
    PyObject *book = NULL, *pair = NULL;
    if (end - p < 2) {
        snapshot_error("truncated: book section has no pair length");
        goto out;
    }
    uint64_t plen = get_le(&p, 2);
    if ((uint64_t)(end - p) < plen + 21) {
        snapshot_error("truncated: book section has no header");
        goto out;
    }
    pair = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)plen, "strict");
    if (pair == NULL) {
        PyErr_Clear();
        snapshot_error("book section: pair name is not utf-8");
        goto out;
    }
    p += plen;
    uint64_t trading = get_le(&p, 1), seq = get_le(&p, 8), tid = get_le(&p, 8);
    uint64_t n = get_le(&p, 4);
    if ((uint64_t)(end - p) != n * RECORD_SIZE) {
        snapshot_error("%U: book section declares %llu orders in %zd bytes", pair,
                       (unsigned long long)n, (Py_ssize_t)(end - p));
        goto out;
    }
    if (trading > 1) {
        snapshot_error("%U: trading flag %d is not 0 or 1", pair, (int)trading);
        goto out;
    }
    book = PyObject_CallFunction(cls, "OLLLO", pair, mn, mk, tk, trading ? Py_True : Py_False);
    if (book == NULL)
        goto out;
    if (!PyObject_TypeCheck(book, (PyTypeObject *)cls) || ((Book *)book)->orders == NULL) {
        PyErr_SetString(PyExc_TypeError, "restore() needs an OrderBook class");
        Py_CLEAR(book);
        goto out;
    }
    ((Book *)book)->seq = seq;
    ((Book *)book)->trade_id = tid;
    if (load_records((Book *)book, p, (uint32_t)n) == NULL)
        Py_CLEAR(book);
out:
    Py_XDECREF(pair);
    PyBuffer_Release(&buf);
    return book;
}

/* ---- type ---- */
static int Book_init(Book *b, PyObject *args, PyObject *kw)
{
    static char *names[] = {"pair", "min_notional", "maker_fee_ppm", "taker_fee_ppm", "trading",
                            NULL};
    PyObject *pair;
    long long mn = 0, mk = 0, tk = 0;
    int trading = 1;
    if (b->busy) {
        PyErr_SetString(PyExc_RuntimeError, "OrderBook is busy (re-entrant call)");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "U|LLLp:OrderBook", names, &pair, &mn, &mk, &tk,
                                     &trading))
        return -1;
    Py_ssize_t plen;
    if (PyUnicode_AsUTF8AndSize(pair, &plen) == NULL)
        return -1;
    if (plen > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "pair name longer than 65535 bytes");
        return -1;
    }
    if (storage_init(b) < 0)
        return -1;
    Py_INCREF(pair);
    Py_XSETREF(b->pair, pair);
    b->min_notional = mn;
    b->maker_ppm = mk;
    b->taker_ppm = tk;
    b->trading = trading;
    b->seq = b->trade_id = 0;
    return 0;
}

/* Storage from the start, so even a book never __init__-ed is safe to call. */
static PyObject *Book_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    Book *b = (Book *)type->tp_alloc(type, 0);
    if (b == NULL)
        return NULL;
    b->pair = PyUnicode_FromString("");
    if (b->pair == NULL || storage_init(b) < 0) {
        Py_DECREF(b);
        return NULL;
    }
    b->trading = 1;
    return (PyObject *)b;
}

static void Book_dealloc(Book *b)
{
    storage_free(b);
    Py_XDECREF(b->pair);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static PyObject *get_pair(Book *b, void *c)
{
    if (b->pair == NULL)
        Py_RETURN_NONE;
    Py_INCREF(b->pair);
    return b->pair;
}
static PyObject *get_min_notional(Book *b, void *c) { return I64(b->min_notional); }
static PyObject *get_maker(Book *b, void *c) { return I64(b->maker_ppm); }
static PyObject *get_taker(Book *b, void *c) { return I64(b->taker_ppm); }
static PyObject *get_trading(Book *b, void *c) { return PyBool_FromLong(b->trading); }
static PyObject *get_seq(Book *b, void *c) { return PyLong_FromUnsignedLongLong(b->seq); }
static PyObject *get_trade_id(Book *b, void *c)
{
    return PyLong_FromUnsignedLongLong(b->trade_id);
}

static PyGetSetDef Book_getset[] = {
    {"pair", (getter)get_pair, NULL, "the pair this book trades", NULL},
    {"min_notional", (getter)get_min_notional, NULL, "minimum notional, in units", NULL},
    {"maker_fee_ppm", (getter)get_maker, NULL, "maker fee rate, ppm", NULL},
    {"taker_fee_ppm", (getter)get_taker, NULL, "taker fee rate, ppm", NULL},
    {"trading", (getter)get_trading, NULL, "whether the market accepts orders", NULL},
    {"seq", (getter)get_seq, NULL, "the last seq emitted", NULL},
    {"last_trade_id", (getter)get_trade_id, NULL, "the last trade id", NULL},
    {NULL},
};

#define FASTKW (METH_FASTCALL | METH_KEYWORDS)
static PyMethodDef Book_methods[] = {
    {"place", (PyCFunction)(void (*)(void))Book_place, FASTKW, "place an order -> events"},
    {"cancel", (PyCFunction)(void (*)(void))Book_cancel, FASTKW, "cancel an order -> events"},
    {"amend", (PyCFunction)(void (*)(void))Book_amend, FASTKW, "amend an order -> events"},
    {"cancel_all", (PyCFunction)(void (*)(void))Book_cancel_all, FASTKW,
     "cancel a user's orders -> events"},
    {"set_trading", (PyCFunction)(void (*)(void))Book_set_trading, FASTKW,
     "open or close the market -> events"},
    {"apply", (PyCFunction)Book_apply, METH_O, "apply one engine.domain command -> events"},
    {"apply_many", (PyCFunction)Book_apply_many, METH_O, "apply commands -> all events"},
    {"best_bid", (PyCFunction)Book_best_bid, METH_NOARGS, "best bid price or None"},
    {"best_ask", (PyCFunction)Book_best_ask, METH_NOARGS, "best ask price or None"},
    {"depth", (PyCFunction)Book_depth, METH_O, "(bids, asks): (price, qty) best first"},
    {"take_level_changes", (PyCFunction)Book_take_level_changes, METH_NOARGS,
     "levels changed since the last call: (side, price, qty now), sorted"},
    {"order", (PyCFunction)Book_order, METH_O, "(user_id, side, price, remaining, stp) or None"},
    {"orders", (PyCFunction)Book_orders, METH_NOARGS, "resting orders in snapshot order"},
    {"resting_qty", (PyCFunction)Book_resting_qty, METH_NOARGS, "total resting lots"},
    {"dump", (PyCFunction)Book_dump, METH_NOARGS, "this book's snapshot section"},
    {"restore", (PyCFunction)(void (*)(void))Book_restore,
     METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "the book saved in a snapshot section"},
    {NULL},
};

static PySequenceMethods Book_as_sequence = {.sq_length = (lenfunc)Book_len};

static PyTypeObject BookType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "engine._cbook.OrderBook",
    .tp_basicsize = sizeof(Book),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The compiled order book of one pair (same API and events as engine.book).",
    .tp_new = Book_new,
    .tp_init = (initproc)Book_init,
    .tp_dealloc = (destructor)Book_dealloc,
    .tp_methods = Book_methods,
    .tp_getset = Book_getset,
    .tp_as_sequence = &Book_as_sequence,
};

/* ======================================================================================
 * Module.
 * ==================================================================================== */
static int get_type(PyObject *mod, const char *name, PyTypeObject **out)
{
    PyObject *t = PyObject_GetAttrString(mod, name);
    if (t == NULL)
        return -1;
    if (!PyType_Check(t) || !PyType_IsSubtype((PyTypeObject *)t, &PyTuple_Type)) {
        Py_DECREF(t);
        PyErr_Format(PyExc_ImportError, "engine.domain.%s is not a NamedTuple", name);
        return -1;
    }
    *out = (PyTypeObject *)t;
    return 0;
}

/* The result codes above are copies: refuse to load if engine.domain disagrees. */
static int check_codes(PyObject *domain)
{
    static const struct {
        const char *name;
        int value;
    } codes[] = {
        {"INVALID_REQUEST", RC_INVALID_REQUEST}, {"BELOW_MIN_NOTIONAL", RC_BELOW_MIN_NOTIONAL},
        {"INVALID_PRICE", RC_INVALID_PRICE}, {"INVALID_QUANTITY", RC_INVALID_QUANTITY},
        {"MARKET_CLOSED", RC_MARKET_CLOSED}, {"UNKNOWN_ORDER", RC_UNKNOWN_ORDER},
        {"DUPLICATE_ORDER_ID", RC_DUPLICATE_ORDER_ID},
        {"POST_ONLY_WOULD_CROSS", RC_POST_ONLY_WOULD_CROSS},
        {"FOK_NOT_FILLABLE", RC_FOK_NOT_FILLABLE}, {"AMEND_WOULD_CROSS", RC_AMEND_WOULD_CROSS},
        {"AMEND_WOULD_ENLARGE", RC_AMEND_WOULD_ENLARGE},
    };
    PyObject *rc = PyObject_GetAttrString(domain, "ResultCode");
    if (rc == NULL)
        return -1;
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        PyObject *m = PyObject_GetAttrString(rc, codes[i].name);
        long v = m ? PyLong_AsLong(m) : -1;
        Py_XDECREF(m);
        if (m == NULL || v != codes[i].value) {
            Py_DECREF(rc);
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ImportError, "ResultCode.%s changed", codes[i].name);
            return -1;
        }
    }
    Py_DECREF(rc);
    return 0;
}

static struct PyModuleDef cbook_module = {
    PyModuleDef_HEAD_INIT, "engine._cbook",
    "The compiled matching core: OrderBook, identical in behaviour to engine.book.", -1, NULL,
};

PyMODINIT_FUNC PyInit__cbook(void)
{
    PyObject *domain = PyImport_ImportModule("engine.domain");
    if (domain == NULL)
        return NULL;
    PyObject *snap = PyImport_ImportModule("engine.snapshot");
    if (snap == NULL) {
        Py_DECREF(domain);
        return NULL;
    }
    int bad = get_type(domain, "Accepted", &T_Accepted) || get_type(domain, "Rejected", &T_Rejected)
        || get_type(domain, "Trade", &T_Trade) || get_type(domain, "Cancelled", &T_Cancelled)
        || get_type(domain, "Amended", &T_Amended) || get_type(domain, "Expired", &T_Expired)
        || get_type(domain, "Done", &T_Done) || get_type(domain, "MarketStatus", &T_MarketStatus)
        || get_type(domain, "Place", &T_Place) || get_type(domain, "Cancel", &T_Cancel)
        || get_type(domain, "Amend", &T_Amend) || get_type(domain, "CancelAll", &T_CancelAll)
        || get_type(domain, "SetTrading", &T_SetTrading) || check_codes(domain)
        || !(fee_fn = PyObject_GetAttrString(domain, "fee"))
        || !(SnapshotError = PyObject_GetAttrString(snap, "SnapshotError"));
    Py_DECREF(domain);
    Py_DECREF(snap);
    if (bad || PyType_Ready(&BookType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&cbook_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&BookType);
    if (PyModule_AddObject(m, "OrderBook", (PyObject *)&BookType) < 0) {
        Py_DECREF(&BookType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
