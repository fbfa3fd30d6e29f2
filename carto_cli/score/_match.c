/* The multi-pattern token search's loop in C (see carto_cli/score/match.py, whose numpy version
 * `_find_numpy` it replaces where the extension was built, with the same result).
 *
 * find(values, offsets, flat, starts, lengths, sorted_hashes, order, anchor)
 *   -> (bytearray, h): every occurrence of every pattern in the rows
 *      values[offsets[r]:offsets[r + 1]], as 3 * h int64 in one buffer: h pattern indices, then
 *      h row indices, then h positions in their row, sorted by (pattern, row, pos).
 *
 *   values:        the rows' tokens, flat: int64 or uint64, int32/uint32, int16/uint16, int8/uint8
 *                  (a token is its value as int64, so a narrow dataset column needs no int64 copy)
 *   offsets:       int64 [m + 1], non-decreasing, within values
 *   flat:          int64, the patterns' tokens one after another; pattern j is
 *                  flat[starts[j]:starts[j] + lengths[j]], lengths[j] >= anchor
 *   sorted_hashes: uint64 [p], the anchors' hashes sorted; order: int64 [p], a permutation of the
 *                  patterns: order[k] is the pattern whose anchor hash is sorted_hashes[k]
 *
 * The hash of a window of `anchor` tokens t_0..t_{a-1} is sum_k mix(t_k) * MUL^(a-1-k) modulo
 * 2^64 (match.window_hashes), rolled along each row in O(1) per token:
 * h' = (h - mix(t_out) * MUL^(a-1)) * MUL + mix(t_in), each token mixed once (a ring of the
 * window's mixed tokens). A window's hash is looked up first in a bit filter (one bit per 2^-k of
 * the hash range, at most 1 in 64 set: almost every window is rejected by one well-predicted
 * branch), then in an open-addressing table of the distinct anchor hashes (linear probing, at
 * most a quarter full); each pattern with that hash is compared token by token, so a hash
 * collision costs a comparison, never a wrong hit.
 *
 * Measured while writing it (CPU ns per token, 10M uint16 Zipf tokens, 16-token patterns, anchor
 * 8; for 10 / 1,000 / 100,000 patterns): filter + table 1.7 / 2.0 / 4.2; the table alone 3.8 /
 * 5.4 / 12.1 (a quarter of the windows land on a filled slot: mispredicted branches); a binary
 * search over sorted_hashes 12 / 43 / 84, or 1.9 / 2.5 / 4.4 behind the same filter. The rolling
 * hash's dependency chain (a multiply and two adds per token) is what is left.
 *
 * Output: hits are appended in scan order (row, then position: already sorted within a pattern)
 * to a buffer that doubles when full (realloc: amortised O(1) per hit, at most twice the hits'
 * memory while growing; a common pattern can have millions of copies, and counting them first
 * would scan the rows twice). A counting sort by pattern, stable, then gives (pattern, row, pos)
 * order straight into the returned bytearray.
 *
 * Every input is checked before the scan (sizes, offsets non-decreasing and within values,
 * patterns within flat and at least `anchor` long, order a permutation, hashes sorted): a
 * violation raises ValueError, so no input makes the loop read outside its arrays. The scan and
 * the sort run without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_buffers.h"

#define MUL 0x9E3779B97F4A7C15ULL /* match._MUL */
#define FIRST_HITS 1024           /* the hit buffer's first size; it doubles from there */

/* splitmix64's finaliser (match._mix): a bijection of 64-bit words */
static inline uint64_t mix(uint64_t z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* One table slot: the patterns order[lo:hi] have anchor hash `hash`; hi == 0 marks an empty slot
 * (a filled one has hi > lo >= 0). */
typedef struct {
    uint64_t hash;
    uint32_t lo, hi;
} Slot;

typedef struct {
    Slot *slots;
    uint64_t mask;
    int shift;
    uint64_t *filter; /* one bit per 2^-filter_bits of the hash range, set where an anchor hash falls */
    int filter_shift;
} Table;

/* the table of the distinct hashes of sorted_hashes (sorted, checked by the caller) */
static int table_build(Table *t, const uint64_t *sorted, Py_ssize_t p) {
    int bits = 4;
    while (((Py_ssize_t)1 << bits) < 4 * p) bits++; /* at most a quarter full */
    t->mask = ((uint64_t)1 << bits) - 1;
    t->shift = 64 - bits;
    t->slots = calloc((size_t)1 << bits, sizeof(Slot));
    int filter_bits = 12;
    while (((Py_ssize_t)1 << filter_bits) < 64 * p) filter_bits++; /* at most 1 bit in 64 set */
    t->filter_shift = 64 - filter_bits;
    t->filter = calloc((size_t)1 << (filter_bits - 6), sizeof(uint64_t));
    if (!t->slots || !t->filter) return -1;
    for (Py_ssize_t k = 0; k < p; k++) {
        uint64_t bit = sorted[k] >> t->filter_shift;
        t->filter[bit >> 6] |= (uint64_t)1 << (bit & 63);
    }
    for (Py_ssize_t lo = 0, hi; lo < p; lo = hi) {
        for (hi = lo + 1; hi < p && sorted[hi] == sorted[lo]; hi++) {}
        uint64_t at = sorted[lo] >> t->shift; /* the hash's top bits: its best mixed */
        while (t->slots[at].hi) at = (at + 1) & t->mask;
        t->slots[at] = (Slot){sorted[lo], (uint32_t)lo, (uint32_t)hi};
    }
    return 0;
}

/* the slot holding hash h, or NULL */
static inline const Slot *table_find(const Table *t, uint64_t h) {
    uint64_t bit = h >> t->filter_shift;
    if (!((t->filter[bit >> 6] >> (bit & 63)) & 1)) return NULL; /* almost every window: predictable */
    uint64_t at = h >> t->shift;
    for (;;) {
        const Slot *s = &t->slots[at];
        if (!s->hi) return NULL;
        if (s->hash == h) return s;
        at = (at + 1) & t->mask;
    }
}

/* The hits found so far, in scan order: (pattern, row, pos) triples. */
typedef struct {
    int64_t *data;
    Py_ssize_t n, cap;
} Hits;

static inline int hits_add(Hits *hits, int64_t pattern, int64_t row, int64_t pos) {
    if (hits->n == hits->cap) {
        Py_ssize_t cap = hits->cap ? 2 * hits->cap : FIRST_HITS;
        int64_t *data = realloc(hits->data, (size_t)cap * 3 * sizeof(int64_t));
        if (!data) return -1;
        hits->data = data;
        hits->cap = cap;
    }
    int64_t *at = hits->data + 3 * hits->n++;
    at[0] = pattern;
    at[1] = row;
    at[2] = pos;
    return 0;
}

typedef struct {
    const int64_t *offsets, *flat, *starts, *lengths, *order;
    Py_ssize_t rows;
    int64_t anchor;
    Table table;
} Search;

/* The scan of every row for one token type T: 0, or -1 when the hit buffer could not grow. `ring`
 * holds the mixed tokens of the current window (ring_mask + 1 >= anchor entries), so that each
 * token is mixed once. */
#define SCAN(NAME, T)                                                                                  \
    static int NAME(const T *values, const Search *s, uint64_t *ring, uint64_t ring_mask, Hits *hits) { \
        const int64_t a = s->anchor;                                                                   \
        uint64_t top = 1; /* MUL^(a - 1): the weight of a window's first token */                      \
        for (int64_t k = 1; k < a; k++) top *= MUL;                                                    \
        for (Py_ssize_t r = 0; r < s->rows; r++) {                                                     \
            const int64_t lo = s->offsets[r], end = s->offsets[r + 1];                                 \
            if (end - lo < a) continue; /* no window fits (an empty row included) */                   \
            uint64_t h = 0;                                                                            \
            for (int64_t k = 0; k < a; k++) {                                                          \
                uint64_t m = mix((uint64_t)(int64_t)values[lo + k]);                                   \
                ring[k & ring_mask] = m;                                                               \
                h = h * MUL + m;                                                                       \
            }                                                                                          \
            for (int64_t i = lo;; i++) {                                                               \
                const Slot *slot = table_find(&s->table, h);                                           \
                if (slot) {                                                                            \
                    for (uint32_t k = slot->lo; k < slot->hi; k++) {                                   \
                        const int64_t j = s->order[k], n = s->lengths[j];                              \
                        if (n > end - i) continue; /* runs past the row's end */                       \
                        const int64_t *want = s->flat + s->starts[j];                                  \
                        int64_t t = 0;                                                                 \
                        while (t < n && (int64_t)values[i + t] == want[t]) t++;                        \
                        if (t == n && hits_add(hits, j, r, i - lo) < 0) return -1;                     \
                    }                                                                                  \
                }                                                                                      \
                if (i + a >= end) break;                                                               \
                /* out: the window's first token; in: the next one, into a slot no longer in the   \
                 * window (the ring holds a power of two >= a tokens of the row, by offset) */     \
                const uint64_t out = ring[(i - lo) & ring_mask];                                       \
                const uint64_t in = mix((uint64_t)(int64_t)values[i + a]);                             \
                ring[(i - lo + a) & ring_mask] = in;                                                   \
                h = (h - out * top) * MUL + in;                                                        \
            }                                                                                          \
        }                                                                                              \
        return 0;                                                                                      \
    }

SCAN(scan_i64, int64_t)
SCAN(scan_i32, int32_t)
SCAN(scan_u32, uint32_t)
SCAN(scan_i16, int16_t)
SCAN(scan_u16, uint16_t)
SCAN(scan_i8, int8_t)
SCAN(scan_u8, uint8_t)

typedef int (*Scan)(const void *, const Search *, uint64_t *, uint64_t, Hits *);

/* the scan for the values' buffer format (struct module codes), or NULL */
static Scan scan_for(const Py_buffer *v) {
    const char *f = v->format ? v->format : "B";
    if (*f == '@' || *f == '=' || *f == '<') f++; /* native order (checked: '<' only on little-endian) */
    if (strlen(f) != 1) return NULL;
    int is_signed = *f == 'b' || *f == 'h' || *f == 'i' || *f == 'l' || *f == 'q';
    int is_integer = is_signed || *f == 'B' || *f == 'H' || *f == 'I' || *f == 'L' || *f == 'Q';
    if (!is_integer) return NULL;
    switch (v->itemsize) {
    case 8: return (Scan)scan_i64; /* uint64 too: the same 64 bits as the int64 patterns */
    case 4: return is_signed ? (Scan)scan_i32 : (Scan)scan_u32;
    case 2: return is_signed ? (Scan)scan_i16 : (Scan)scan_u16;
    case 1: return is_signed ? (Scan)scan_i8 : (Scan)scan_u8;
    default: return NULL;
    }
}

/* the first thing wrong with the inputs, or NULL */
static const char *check(const Buf *b, Py_ssize_t n_values, Py_ssize_t *rows, Py_ssize_t *p,
                         long long anchor, Py_ssize_t flat_n) {
    for (int i = 0; i < 6; i++)
        if (b[i].view.itemsize != 8) return "offsets, flat, starts, lengths, sorted_hashes and order must be 64-bit";
    if (anchor < 1) return "anchor must be >= 1";
    if (b[0].view.len < 16) return "offsets needs at least 2 entries";
    const int64_t *offsets = b[0].view.buf, *starts = b[2].view.buf, *lengths = b[3].view.buf;
    const int64_t *order = b[5].view.buf;
    const uint64_t *sorted = b[4].view.buf;
    *rows = b[0].view.len / 8 - 1;
    *p = b[2].view.len / 8;
    if (b[3].view.len != b[2].view.len || b[4].view.len != b[2].view.len || b[5].view.len != b[2].view.len)
        return "starts, lengths, sorted_hashes and order must have one entry per pattern";
    if (*p >= INT32_MAX) return "too many patterns (at most 2^31 - 1)";
    if (offsets[0] < 0) return "offsets must be >= 0";
    for (Py_ssize_t r = 0; r < *rows; r++)
        if (offsets[r + 1] < offsets[r]) return "offsets must be non-decreasing";
    if (offsets[*rows] > n_values) return "offsets point past the end of values";
    for (Py_ssize_t j = 0; j < *p; j++) {
        if (lengths[j] < anchor) return "every pattern needs at least anchor tokens";
        if (starts[j] < 0 || starts[j] > flat_n || lengths[j] > flat_n - starts[j])
            return "a pattern lies outside flat";
        if (j && sorted[j] < sorted[j - 1]) return "sorted_hashes must be sorted";
    }
    char *seen = calloc(*p ? (size_t)*p : 1, 1);
    if (!seen) return "out of memory";
    const char *wrong = NULL;
    for (Py_ssize_t k = 0; k < *p && !wrong; k++) {
        if (order[k] < 0 || order[k] >= *p || seen[order[k]]) wrong = "order must be a permutation of the patterns";
        else seen[order[k]] = 1;
    }
    free(seen);
    return wrong;
}

/* the hits, stable-sorted by pattern, as pattern[h], row[h], pos[h] into out; counts: int64 [p] */
static void sort_by_pattern(const Hits *hits, Py_ssize_t p, int64_t *counts, int64_t *out) {
    Py_ssize_t h = hits->n;
    for (Py_ssize_t i = 0; i < h; i++) counts[hits->data[3 * i]]++;
    int64_t at = 0;
    for (Py_ssize_t j = 0; j < p; j++) { /* counts become each pattern's first index */
        int64_t c = counts[j];
        counts[j] = at;
        at += c;
    }
    for (Py_ssize_t i = 0; i < h; i++) {
        const int64_t *hit = hits->data + 3 * i;
        int64_t to = counts[hit[0]]++;
        out[to] = hit[0];
        out[h + to] = hit[1];
        out[2 * h + to] = hit[2];
    }
}

static PyObject *find(PyObject *self, PyObject *args) {
    PyObject *values_obj, *o[6];
    long long anchor;
    if (!PyArg_ParseTuple(args, "OOOOOOOL", &values_obj, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &anchor))
        return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(values_obj, &v, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    Buf b[6];
    const int writable[6] = {0};
    if (get_bufs(o, b, writable, 6) < 0) {
        release(b, 6);
        PyBuffer_Release(&v);
        return NULL;
    }
    Scan scan = scan_for(&v);
    Py_ssize_t rows = 0, p = 0;
    const char *wrong = scan ? NULL : "values must be integers of 1, 2, 4 or 8 bytes";
#if PY_BIG_ENDIAN
    if (!wrong && v.format && v.format[0] == '<') wrong = "values must be in native byte order";
#endif
    if (!wrong) wrong = check(b, v.len / (v.itemsize ? v.itemsize : 1), &rows, &p, anchor, b[1].view.len / 8);
    Search s = {b[0].view.buf, b[1].view.buf, b[2].view.buf, b[3].view.buf, b[5].view.buf, rows, anchor, {0}};
    if (!wrong && table_build(&s.table, b[4].view.buf, p) < 0) wrong = "out of memory";
    if (wrong) {
        free(s.table.slots);
        free(s.table.filter);
        release(b, 6);
        PyBuffer_Release(&v);
        if (!strcmp(wrong, "out of memory")) return PyErr_NoMemory();
        PyErr_Format(PyExc_ValueError, "match.find: %s", wrong);
        return NULL;
    }
    uint64_t ring_size = 1;
    while (ring_size < (uint64_t)anchor) ring_size *= 2;
    uint64_t *ring = malloc(ring_size * sizeof(uint64_t));
    Hits hits = {NULL, 0, 0};
    int failed = 1;
    if (ring) {
        Py_BEGIN_ALLOW_THREADS
        failed = scan(v.buf, &s, ring, ring_size - 1, &hits);
        Py_END_ALLOW_THREADS
    }
    free(ring);
    free(s.table.slots);
    free(s.table.filter);
    PyObject *out = failed ? NULL : PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(3 * hits.n * sizeof(int64_t)));
    int64_t *counts = out ? calloc(p ? (size_t)p : 1, sizeof(int64_t)) : NULL;
    if (counts) {
        int64_t *dest = (int64_t *)PyByteArray_AS_STRING(out); /* not yet shared: written without the GIL */
        Py_BEGIN_ALLOW_THREADS
        sort_by_pattern(&hits, p, counts, dest);
        Py_END_ALLOW_THREADS
        free(counts);
    }
    free(hits.data);
    release(b, 6);
    PyBuffer_Release(&v);
    if (!counts) {
        Py_XDECREF(out);
        return PyErr_NoMemory();
    }
    return Py_BuildValue("Nn", out, hits.n);
}

static PyMethodDef methods[] = {
    {"find", find, METH_VARARGS, "Every occurrence of every pattern in the rows, sorted by (pattern, row, pos)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_match", NULL, -1, methods};

PyMODINIT_FUNC PyInit__match(void) { return PyModule_Create(&module); }
