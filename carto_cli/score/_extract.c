/* The `extractable` signal's per-row loops in C (see carto_cli/score/extract.py and
 * extract_loops.py, whose numpy version they replace where the extension was built, with the same
 * results).
 *
 * Every sample slot's accumulators live together in one record of an arena (`Layout` below), so a
 * row of the log costs one cache line wherever its sample lies, not one line per array: the late
 * pass keeps there the last step, the last epoch (plus one: 0 is "none yet"), a scratch mark and
 * the hit runs; between the passes `settle` turns the epoch into a flag and clears the first
 * bytes, which the early pass then uses for its totals, one per run (48-bit), beside the runs and
 * the count of early presentations; `best_values` finally writes each slot's value.
 *
 * The sketch lists are read where pyarrow decoded them: each list column arrives as its offsets
 * (int32, or int64 for large lists) and its values, in the type the log stores (positions and runs
 * as any integer type, losses as float16, float32 or float64), with the batch positions of the
 * rows to take; nothing is gathered, filtered or widened in numpy first.
 *
 * superseded:  whether every slot of a row group already holds a late presentation after the
 *              group's steps (its hit runs then need no decoding: see extract.py).
 * late_runs:   the late pass over one batch: per sample slot, the hit runs of its last
 *              presentation: the largest (step, epoch, runs), the runs compared as lists of
 *              integers, lexicographically (the definition's tie rule: of two presentations at one
 *              step and epoch, the one whose runs compare largest). Within the batch, a slot's
 *              candidate is its largest row; the candidate replaces the slot's stored runs only when
 *              strictly larger than them, so neither the order of the rows nor of the batches matters.
 * early_sums:  the early pass over one batch: per row, n_early[slot] += 1, and each sketched loss
 *              in fixed point (rint(loss * scale), 0 where not finite; a float16 loss is converted
 *              by its bits, exactly the same integer) added to the slot's total of every late run
 *              [start, start + length) that holds its position (a run of length <= 0 holds none).
 *              Integer sums, wrapping modulo 2^48 (the caller bounds them below 2^47 in magnitude:
 *              the largest |fixed-point loss| is returned for that, and the largest count by
 *              best_values): the order of the rows does not matter.
 * best_values: per slot with an early and a late sketched presentation, the largest total over its
 *              runs / scale / n_early (the numpy version's operations, in its order), else NaN
 *              (no value is NaN otherwise), written as doubles over the start of the arena.
 *
 * Both passes check every row's slot against [lo, hi] (its row group's footer range, as slots;
 * within the arena), whatever the file held, and return the first row outside it (-1: none), for
 * the caller to report the part as damaged; and a status: the batch's lists are not all `width`
 * wide (OTHER_WIDTH: the caller leaves the log to the signal's Polars definition), a value does not
 * fit where the loops keep it (OUT_OF_RANGE: the same), or a row's top_pos and top_loss differ in
 * length (LISTS_DIFFER: a damaged part). Nothing is stored for a batch with any of these.
 * Arrays arrive through the buffer protocol, C-contiguous; the loops run without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_buffers.h"
#include "_typed.h"

#define PREFETCH 12 /* rows ahead */

enum { STATUS_OK = 0, OTHER_WIDTH = 1, OUT_OF_RANGE = 2, LISTS_DIFFER = 3 };

/* ------------------------------------------------------------------ the arena's records */

/* A slot's record (`size` bytes; fields unaligned, read and written through memcpy):
 * - late pass: [0, 8) the last step (int64), [8, 12) its epoch + 1 (int32; 0: none yet), [12, 16)
 *   the mark (int32);
 * - early pass (after `settle`): [0, 6 r) the totals, one per run, as 48-bit two's complement
 *   integers (the caller bounds every sum below 2^47 in magnitude, else declines);
 * - both: at `runs`, the 2r run values (uint16, or int32 where the log's are wider); at `n_early`,
 *   the early rows (uint16; more of one sample: the caller declines); at `flag`, a late sketched
 *   presentation (uint8).
 * With the shim's sketch (r = 6, uint16) that is 36 + 24 + 2 + 1 bytes: a 64-byte record, one cache
 * line where the arena is aligned to 64 (extract_loops.py aligns it). */
typedef struct {
    char *base;
    Py_ssize_t size, runs, run_size, n_early, flag, r, n;
} Layout;

static int get_layout(PyObject *arena, PyObject *sizes, Py_buffer *view, Layout *l) {
    if (!PyArg_ParseTuple(sizes, "nnnnnn", &l->size, &l->runs, &l->run_size, &l->n_early, &l->flag, &l->r))
        return -1;
    if (PyObject_GetBuffer(arena, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return -1;
    l->base = view->buf;
    l->n = l->size > 0 ? view->len / l->size : 0;
    if (l->size <= 0 || view->len != l->n * l->size || l->r < 1 || (l->run_size != 2 && l->run_size != 4) ||
        l->runs < (6 * l->r > 16 ? 6 * l->r : 16) || l->n_early < l->runs + 2 * l->r * l->run_size ||
        l->flag < l->n_early + 2 || l->flag >= l->size || l->size % 8 || (uintptr_t)l->base % 8) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "extract: the arena's layout does not hold its fields");
        return -1;
    }
    return 0;
}

#define RECORD(l, slot) ((l)->base + (slot) * (l)->size)

static inline int64_t get_i64(const char *p) { int64_t v; memcpy(&v, p, 8); return v; }
static inline void set_i64(char *p, int64_t v) { memcpy(p, &v, 8); }
static inline int32_t get_i32(const char *p) { int32_t v; memcpy(&v, p, 4); return v; }
static inline void set_i32(char *p, int32_t v) { memcpy(p, &v, 4); }
static inline uint16_t get_u16(const char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline void set_u16(char *p, uint16_t v) { memcpy(p, &v, 2); }

/* The last step and epoch are read by `superseded` on another thread while `late_runs` writes
 * them: relaxed atomic loads and stores (plain moves on x86-64 and arm64; the fields are aligned,
 * records being multiples of 8 bytes from a 64-byte boundary). */
#define LAST_STEP(l, slot) __atomic_load_n((const int64_t *)RECORD(l, slot), __ATOMIC_RELAXED)
#define LAST_EPOCH(l, slot) __atomic_load_n((const int32_t *)(RECORD(l, slot) + 8), __ATOMIC_RELAXED)
#define SET_LAST(l, slot, step, epoch)                                                                \
    do {                                                                                                \
        __atomic_store_n((int64_t *)RECORD(l, slot), (step), __ATOMIC_RELAXED);                        \
        __atomic_store_n((int32_t *)(RECORD(l, slot) + 8), (epoch), __ATOMIC_RELAXED);                 \
    } while (0)
#define MARK(l, slot) get_i32(RECORD(l, slot) + 12)
#define N_EARLY(l, slot) get_u16(RECORD(l, slot) + (l)->n_early)
#define FLAG(l, slot) (*(uint8_t *)(RECORD(l, slot) + (l)->flag))

/* Total j of a record: 48 bits, little-endian, at [6 j, 6 j + 6). Read and written as the 8 bytes
 * from 6 j (the next total's or the runs' first two bytes ride along unchanged: every record has
 * its runs after its totals), sign-extended on reading. */
#define LOW48 (((uint64_t)1 << 48) - 1)

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
static inline uint64_t get_bytes6(const char *p) { /* big-endian hosts: the bytes one by one */
    uint64_t v = 0;
    for (int b = 5; b >= 0; b--) v = (v << 8) | (unsigned char)p[b];
    return v;
}

static inline int64_t get_total(const char *record, Py_ssize_t j) {
    return (int64_t)(get_bytes6(record + 6 * j) << 16) >> 16;
}

static inline void add_total(char *record, Py_ssize_t j, uint64_t sum) {
    uint64_t v = get_bytes6(record + 6 * j) + sum;
    for (int b = 0; b < 6; b++, v >>= 8) record[6 * j + b] = (char)(unsigned char)v;
}
#else
static inline int64_t get_total(const char *record, Py_ssize_t j) {
    uint64_t v;
    memcpy(&v, record + 6 * j, 8);
    return (int64_t)(v << 16) >> 16; /* little-endian: the total is the low 48 bits */
}

static inline void add_total(char *record, Py_ssize_t j, uint64_t sum) {
    uint64_t v;
    memcpy(&v, record + 6 * j, 8);
    v = (v & ~LOW48) | ((v + sum) & LOW48); /* modulo 2^48: the low bits of a wrapping sum */
    memcpy(record + 6 * j, &v, 8);
}
#endif

static inline void load_runs(const Layout *l, Py_ssize_t slot, int64_t *out) {
    const char *p = RECORD(l, slot) + l->runs;
    Py_ssize_t w = 2 * l->r;
    if (l->run_size == 2)
        for (Py_ssize_t j = 0; j < w; j++) out[j] = get_u16(p + 2 * j);
    else
        for (Py_ssize_t j = 0; j < w; j++) out[j] = get_i32(p + 4 * j);
}

static inline void store_runs(const Layout *l, Py_ssize_t slot, const int64_t *in) {
    char *p = RECORD(l, slot) + l->runs;
    Py_ssize_t w = 2 * l->r;
    if (l->run_size == 2)
        for (Py_ssize_t j = 0; j < w; j++) set_u16(p + 2 * j, (uint16_t)in[j]);
    else
        for (Py_ssize_t j = 0; j < w; j++) set_i32(p + 4 * j, (int32_t)in[j]);
}

static PyObject *sizes_differ(Buf *b, int nb, Typed *t, int nt, Py_buffer *arena, const char *name) {
    release(b, nb);
    release_typed(t, nt);
    PyBuffer_Release(arena);
    PyErr_Format(PyExc_ValueError, "%s: the arrays' sizes or the slot bounds do not match", name);
    return NULL;
}

/* ------------------------------------------------------------------ late_runs */

/* -1, 0 or 1 as (step a, epoch a, runs a) compares with (step b, epoch b, runs b) */
static inline int compare(int64_t step_a, int64_t epoch_a, const int64_t *runs_a, int64_t step_b, int64_t epoch_b,
                          const int64_t *runs_b, Py_ssize_t w) {
    if (step_a != step_b) return step_a > step_b ? 1 : -1;
    if (epoch_a != epoch_b) return epoch_a > epoch_b ? 1 : -1;
    for (Py_ssize_t j = 0; j < w; j++)
        if (runs_a[j] != runs_b[j]) return runs_a[j] > runs_b[j] ? 1 : -1;
    return 0;
}

#define MAX_RUNS 1024 /* 2r values a list at most (the shim logs 12; extract.py declines wider ones) */

/* late_runs(arena, layout, idx, rows, offsets, values, step, epoch, starts, lo, hi)
 * idx/rows/step/epoch: int64 [m] (the rows' slots, their positions in the batch's list arrays (rows
 * empty: positions 0 .. m - 1),
 * their steps and epochs, each epoch in [0, INT32_MAX)); offsets/values: the hit_runs list array;
 * starts: int64 [m], scratch.
 * The mark is a slot's candidate as its row in the batch; any value is safe: a mark counts only
 * where it names an earlier row of this batch with the same slot.
 * -> (first row whose slot is outside [lo, hi], or -1; status) */
static PyObject *late_runs(PyObject *self, PyObject *args) {
    PyObject *arena, *sizes, *o[7];
    Py_ssize_t lo, hi;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOnn", &arena, &sizes, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &lo,
                          &hi))
        return NULL;
    Py_buffer view;
    Layout l;
    if (get_layout(arena, sizes, &view, &l) < 0) return NULL;
    PyObject *plain[5] = {o[0], o[1], o[4], o[5], o[6]};
    const int writable[5] = {0, 0, 0, 0, 1};
    Buf b[5];
    Typed t[2];
    t[0].held = t[1].held = 0;
    if (get_bufs(plain, b, writable, 5) < 0 || get_typed(o[2], &t[0], "late_runs offsets") < 0 ||
        get_typed(o[3], &t[1], "late_runs values") < 0) {
        release(b, 5);
        release_typed(t, 2);
        PyBuffer_Release(&view);
        return NULL;
    }
    const int64_t *idx = b[0].view.buf, *rows = b[1].view.buf, *step = b[2].view.buf, *epoch = b[3].view.buf;
    int64_t *start = b[4].view.buf;
    const Typed *offsets = &t[0], *values = &t[1];
    Py_ssize_t m = b[0].view.len / 8, n = l.n, w = 2 * l.r;
    const int identity = b[1].view.len == 0; /* no rows given: row i is batch position i */
    if ((!identity && b[1].view.len != m * 8) || b[2].view.len != m * 8 || b[3].view.len != m * 8 || b[4].view.len != m * 8 ||
        is_float(offsets) || is_float(values) || w > MAX_RUNS || lo < 0 || hi >= n || m > INT32_MAX)
        return sizes_differ(b, 5, t, 2, &view, "late_runs");
    const int64_t low = l.run_size == 2 ? 0 : INT32_MIN, high = l.run_size == 2 ? UINT16_MAX : INT32_MAX;
    const uint64_t span = (uint64_t)(hi - lo);
    Py_ssize_t bad = -1;
    int status = STATUS_OK;
    Py_BEGIN_ALLOW_THREADS
    int64_t mine[MAX_RUNS], theirs[MAX_RUNS];
    /* every row checked, and the batch's candidate per slot: its largest row */
    for (Py_ssize_t i = 0; i < m; i++) {
        int64_t slot = idx[i], length = 0;
        if ((uint64_t)(slot - lo) > span) { bad = i; break; }
        if (i + PREFETCH < m) {
            int64_t ahead = idx[i + PREFETCH];
            if ((uint64_t)(ahead - lo) <= span) __builtin_prefetch(RECORD(&l, ahead), 1);
        }
        start[i] = list_at(offsets, values, identity ? i : rows[i], &length);
        if (start[i] < 0 || epoch[i] < 0 || epoch[i] >= INT32_MAX) { status = OUT_OF_RANGE; break; }
        if (length != w) { status = OTHER_WIDTH; break; }
        if (!ints_within(values, start[i], w, low, high)) { status = OUT_OF_RANGE; break; }
        int64_t at = MARK(&l, slot);
        int take = at < 0 || at >= i || idx[at] != slot || step[i] > step[at] ||
                   (step[i] == step[at] && epoch[i] > epoch[at]);
        if (!take && step[i] == step[at] && epoch[i] == epoch[at]) { /* tied: the runs decide */
            load_ints(values, start[i], w, mine);
            load_ints(values, start[at], w, theirs);
            take = compare(0, 0, mine, 0, 0, theirs, w) > 0;
        }
        if (take) set_i32(RECORD(&l, slot) + 12, (int32_t)i);
    }
    /* each candidate against the slot's stored presentation (none where its epoch + 1 is 0) */
    for (Py_ssize_t i = 0; i < m && bad < 0 && status == STATUS_OK; i++) {
        int64_t slot = idx[i];
        if (i + PREFETCH < m) {
            const char *ahead = RECORD(&l, idx[i + PREFETCH]);
            __builtin_prefetch(ahead, 1);
            __builtin_prefetch(ahead + l.size - 1, 1);
        }
        if (MARK(&l, slot) != i) continue;
        int32_t stored = LAST_EPOCH(&l, slot);
        int64_t last = LAST_STEP(&l, slot);
        int larger = stored == 0 || step[i] > last || (step[i] == last && epoch[i] + 1 > stored);
        load_ints(values, start[i], w, mine);
        if (!larger && step[i] == last && epoch[i] + 1 == stored) {
            load_runs(&l, slot, theirs);
            larger = compare(0, 0, mine, 0, 0, theirs, w) > 0;
        }
        if (larger) {
            SET_LAST(&l, slot, step[i], (int32_t)(epoch[i] + 1));
            store_runs(&l, slot, mine);
        }
    }
    Py_END_ALLOW_THREADS
    release(b, 5);
    release_typed(t, 2);
    PyBuffer_Release(&view);
    return Py_BuildValue("ni", bad, status);
}

/* superseded(arena, layout, idx, lo, hi, step) -> whether every slot of idx (int64 [m]) lies in
 * [lo, hi] and already holds a late presentation at a step after `step`: then no row of a row
 * group whose steps are at most `step` can replace one (late_runs needs not see them). Called on
 * the reader thread while late_runs may run: it reads each slot's step and epoch atomically, and a
 * slot's stored step only grows, so a yes stays true. */
static PyObject *superseded(PyObject *self, PyObject *args) {
    PyObject *arena, *sizes, *o;
    Py_ssize_t lo, hi;
    long long step;
    if (!PyArg_ParseTuple(args, "OOOnnL", &arena, &sizes, &o, &lo, &hi, &step)) return NULL;
    Py_buffer view;
    Layout l;
    if (get_layout(arena, sizes, &view, &l) < 0) return NULL;
    Buf b[1];
    const int writable[1] = {0};
    if (get_bufs(&o, b, writable, 1) < 0) { release(b, 1); PyBuffer_Release(&view); return NULL; }
    const int64_t *idx = b[0].view.buf;
    Py_ssize_t m = b[0].view.len / 8;
    int all = lo >= 0 && hi < l.n;
    Py_BEGIN_ALLOW_THREADS
    const uint64_t span = (uint64_t)(hi - lo);
    for (Py_ssize_t i = 0; i < m && all; i++) {
        int64_t slot = idx[i];
        if (i + PREFETCH < m && (uint64_t)(idx[i + PREFETCH] - lo) <= span)
            __builtin_prefetch(RECORD(&l, idx[i + PREFETCH]));
        all = (uint64_t)(slot - lo) <= span && LAST_EPOCH(&l, slot) != 0 && LAST_STEP(&l, slot) > step;
    }
    Py_END_ALLOW_THREADS
    release(b, 1);
    PyBuffer_Release(&view);
    return PyBool_FromLong(all);
}

/* settle(arena, layout): between the passes: each slot's flag = it has a late sketched presentation;
 * its first bytes (step, epoch, mark) cleared for the totals; its count of early rows cleared. */
static PyObject *settle(PyObject *self, PyObject *args) {
    PyObject *arena, *sizes;
    if (!PyArg_ParseTuple(args, "OO", &arena, &sizes)) return NULL;
    Py_buffer view;
    Layout l;
    if (get_layout(arena, sizes, &view, &l) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t s = 0; s < l.n; s++) {
        FLAG(&l, s) = LAST_EPOCH(&l, s) != 0;
        memset(RECORD(&l, s), 0, (size_t)l.runs); /* the totals, and the step, epoch and mark before them */
        set_u16(RECORD(&l, s) + l.n_early, 0);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ early_sums */

/* early_sums(arena, layout, idx, rows, pos_offsets, pos_values, loss_offsets, loss_values, k, lo, hi)
 * idx/rows: int64 [m] (rows empty: positions 0 .. m - 1); pos_*: the top_pos list array (integers), loss_*: the top_loss list array
 * (floats), every list k long.
 * -> (first row whose slot is outside [lo, hi], or -1; the largest |fixed-point loss| added, or -1
 *    where a finite loss was too large for it: the caller then declines; status) */
static PyObject *early_sums(PyObject *self, PyObject *args) {
    PyObject *arena, *sizes, *o[6];
    Py_ssize_t k, lo, hi;
    if (!PyArg_ParseTuple(args, "OOOOOOOOnnn", &arena, &sizes, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &k, &lo, &hi))
        return NULL;
    Py_buffer view;
    Layout l;
    if (get_layout(arena, sizes, &view, &l) < 0) return NULL;
    PyObject *plain[2] = {o[0], o[1]};
    const int writable[2] = {0, 0};
    Buf b[2];
    Typed t[4];
    for (int i = 0; i < 4; i++) t[i].held = 0;
    if (get_bufs(plain, b, writable, 2) < 0 || get_typed(o[2], &t[0], "early_sums pos offsets") < 0 ||
        get_typed(o[3], &t[1], "early_sums positions") < 0 || get_typed(o[4], &t[2], "early_sums loss offsets") < 0 ||
        get_typed(o[5], &t[3], "early_sums losses") < 0) {
        release(b, 2);
        release_typed(t, 4);
        PyBuffer_Release(&view);
        return NULL;
    }
    const int64_t *idx = b[0].view.buf, *rows = b[1].view.buf;
    const Typed *pos_offsets = &t[0], *pos = &t[1], *loss_offsets = &t[2], *loss = &t[3];
    Py_ssize_t m = b[0].view.len / 8, n = l.n, r = l.r;
    const int identity = b[1].view.len == 0; /* no rows given: row i is batch position i */
    if ((!identity && b[1].view.len != m * 8) || is_float(pos_offsets) || is_float(loss_offsets) || is_float(pos) ||
        !is_float(loss) || k <= 0 || 2 * r > MAX_RUNS || lo < 0 || hi >= n)
        return sizes_differ(b, 2, t, 4, &view, "early_sums");
    const uint64_t span = (uint64_t)(hi - lo);
    Py_ssize_t bad = -1;
    int status = STATUS_OK;
    int64_t most = 0; /* the largest |fixed-point loss|; -1 once a loss is too large for it */
    Py_BEGIN_ALLOW_THREADS
    /* every row checked before anything is added */
    for (Py_ssize_t i = 0; i < m; i++) {
        int64_t slot = idx[i], pos_length = 0, loss_length = 0;
        if ((uint64_t)(slot - lo) > span) { bad = i; break; }
        int64_t row = identity ? i : rows[i];
        int64_t p0 = list_at(pos_offsets, pos, row, &pos_length);
        int64_t l0 = list_at(loss_offsets, loss, row, &loss_length);
        if (p0 < 0 || l0 < 0) { status = OUT_OF_RANGE; break; }
        if (pos_length != loss_length) { status = LISTS_DIFFER; break; }
        if (pos_length != k) { status = OTHER_WIDTH; break; }
        if (!ints_within(pos, p0, k, INT32_MIN, INT32_MAX)) { status = OUT_OF_RANGE; break; } /* as numpy's */
    }
    int64_t spans[MAX_RUNS], at[CHUNK];
    uint64_t fixed[CHUNK];
    for (Py_ssize_t i = 0; i < m && bad < 0 && status == STATUS_OK; i++) {
        int64_t slot = idx[i], length;
        if (i + PREFETCH < m) { /* rows come in random slot order: ask for a later row's record now */
            const char *ahead = RECORD(&l, idx[i + PREFETCH]);
            __builtin_prefetch(ahead, 1);
            __builtin_prefetch(ahead + l.size - 1, 1);
        }
        char *record = RECORD(&l, slot);
        uint16_t count = get_u16(record + l.n_early);
        if (count == UINT16_MAX) { status = OUT_OF_RANGE; break; } /* the caller declines */
        set_u16(record + l.n_early, (uint16_t)(count + 1));
        int64_t row = identity ? i : rows[i];
        int64_t p0 = list_at(pos_offsets, pos, row, &length), l0 = list_at(loss_offsets, loss, row, &length);
        load_runs(&l, slot, spans);
        for (Py_ssize_t q0 = 0; q0 < k; q0 += CHUNK) {
            /* up to CHUNK sketched positions and their fixed-point losses, then each run's sum
             * over them: a short loop over contiguous locals, for each run */
            Py_ssize_t here = k - q0 < CHUNK ? k - q0 : CHUNK;
            load_ints(pos, p0 + q0, here, at);
            load_fixed(loss, l0 + q0, here, fixed, &most);
            for (Py_ssize_t j = 0; j < r; j++) {
                int64_t first = spans[2 * j], run_length = spans[2 * j + 1];
                uint64_t width = run_length > 0 ? (uint64_t)run_length : 0, sum = 0;
                for (Py_ssize_t q = 0; q < here; q++) {
                    /* first <= at < first + length, as one unsigned comparison, and the add made
                     * without a branch: which runs hold a position is unpredictable */
                    uint64_t inside = (uint64_t)(at[q] - first) < width;
                    sum += fixed[q] & -inside;
                }
                add_total(record, j, sum);
            }
        }
    }
    Py_END_ALLOW_THREADS
    release(b, 2);
    release_typed(t, 4);
    PyBuffer_Release(&view);
    return Py_BuildValue("nLi", bad, (long long)most, status);
}

/* ------------------------------------------------------------------ best_values */

/* best_values(arena, layout, scale) -> the largest n_early (the caller's bound on the sums).
 * Writes slot s's value as the double at byte 8 s of the arena, over records already read (record
 * s starts at size * s >= 8 s, and is read before it is written). */
static PyObject *best_values(PyObject *self, PyObject *args) {
    PyObject *arena, *sizes;
    double scale;
    if (!PyArg_ParseTuple(args, "OOd", &arena, &sizes, &scale)) return NULL;
    Py_buffer view;
    Layout l;
    if (get_layout(arena, sizes, &view, &l) < 0) return NULL;
    int64_t most = 0;
    Py_BEGIN_ALLOW_THREADS
    double *out = (double *)l.base;
    for (Py_ssize_t s = 0; s < l.n; s++) {
        const char *record = RECORD(&l, s);
        int64_t n_early = N_EARLY(&l, s);
        double value = NAN;
        if (n_early > most) most = n_early;
        if (n_early > 0 && FLAG(&l, s)) {
            int64_t best = get_total(record, 0);
            for (Py_ssize_t j = 1; j < l.r; j++) {
                int64_t total = get_total(record, j);
                if (total > best) best = total;
            }
            value = (double)best / scale / (double)n_early;
        }
        out[s] = value;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyLong_FromLongLong(most);
}

static PyMethodDef methods[] = {
    {"late_runs", late_runs, METH_VARARGS, "The hit runs of each slot's last late presentation, one batch."},
    {"superseded", superseded, METH_VARARGS, "Whether every slot already holds a later late presentation."},
    {"settle", settle, METH_VARARGS, "The arena between the late and the early pass."},
    {"early_sums", early_sums, METH_VARARGS, "Each slot's early sketched losses summed per late run, one batch."},
    {"best_values", best_values, METH_VARARGS, "Each slot's signal from its totals per run."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_extract", NULL, -1, methods};

PyMODINIT_FUNC PyInit__extract(void) { return PyModule_Create(&module); }
