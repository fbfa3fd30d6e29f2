/* The `extractable` signal's per-row loops in C (see carto_cli/score/extract.py, whose numpy
 * version they replace where the extension was built, with the same results).
 *
 * late_runs:  the late pass over one batch of sketched rows: per sample slot, the hit runs of its
 *             last presentation: the largest (step, epoch, runs), the runs compared as lists of
 *             integers, lexicographically (the definition's tie rule: of two presentations at one
 *             step and epoch, the one whose runs compare largest). Within the batch, a slot's
 *             candidate is its largest row; the candidate replaces the slot's stored runs only when
 *             strictly larger than them, so neither the order of the rows nor of the batches matters.
 * early_sums: the early pass over one batch: per row, n_early[slot] += 1, and each sketched loss
 *             in fixed point (rint(loss * scale), 0 where not finite) added to the slot's total of
 *             every late run [start, start + length) that holds its position (a run of length <= 0
 *             holds none). Integer sums, wrapping as unsigned 64-bit integers (the caller bounds
 *             them: `max_fixed` is returned for that): the order of the rows does not matter.
 *
 * Both check every row's slot against [lo, hi] (its row group's footer range, as slots; within
 * the arrays), whatever the file held, and return the first row outside it (-1: none), for the
 * caller to report the part as damaged; nothing is written for that row or after it.
 * Arrays arrive through the buffer protocol, C-contiguous, in the dtypes the wrapper makes
 * (int64 ids/steps/epochs/marks/totals, int32 runs and positions, float64 losses); the loops run
 * without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

#include "_buffers.h"

#define PREFETCH 16 /* rows ahead */
#define POSITIONS_AT_ONCE 32 /* early_sums: sketched positions taken at a time (the shim logs 10) */
#define LOSS_LIMIT 2147483648.0 /* |loss| below 2^31: its fixed point (x 2^32) fits int64 */

static PyObject *sizes_differ(Buf *b, int n, const char *name) {
    release(b, n);
    PyErr_Format(PyExc_ValueError, "%s: the arrays' sizes or the slot bounds do not match", name);
    return NULL;
}

/* -1, 0 or 1 as (step, epoch, runs) of one row compares with another's */
static inline int compare(int64_t step_a, int64_t epoch_a, const int32_t *runs_a, int64_t step_b, int64_t epoch_b,
                          const int32_t *runs_b, Py_ssize_t w) {
    if (step_a != step_b) return step_a > step_b ? 1 : -1;
    if (epoch_a != epoch_b) return epoch_a > epoch_b ? 1 : -1;
    for (Py_ssize_t j = 0; j < w; j++)
        if (runs_a[j] != runs_b[j]) return runs_a[j] > runs_b[j] ? 1 : -1;
    return 0;
}

/* late_runs(idx, step, epoch, values, last_step, last_epoch, runs, mark, first_row, lo, hi)
 * idx/step/epoch: int64 [m]; values: int32 [m, w]; last_step/last_epoch: int64 [n]; runs: int32
 * [n, w]; mark: int64 [n], a slot's candidate row as first_row + its index in the batch (first_row:
 * this batch's first row over the whole pass, so a mark below it is from an earlier batch).
 * -> -1, or the first row whose slot is outside [lo, hi] (0 <= lo, hi < n). */
static PyObject *late_runs(PyObject *self, PyObject *args) {
    PyObject *o[8];
    long long first_row;
    Py_ssize_t lo, hi;
    if (!PyArg_ParseTuple(args, "OOOOOOOOLnn", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &first_row,
                          &lo, &hi))
        return NULL;
    Buf b[8];
    const int writable[8] = {0, 0, 0, 0, 1, 1, 1, 1};
    if (get_bufs(o, b, writable, 8) < 0) { release(b, 8); return NULL; }
    const int64_t *idx = b[0].view.buf, *step = b[1].view.buf, *epoch = b[2].view.buf;
    const int32_t *values = b[3].view.buf;
    int64_t *last_step = b[4].view.buf, *last_epoch = b[5].view.buf, *mark = b[7].view.buf;
    int32_t *runs = b[6].view.buf;
    Py_ssize_t m = b[0].view.len / 8, n = b[4].view.len / 8;
    Py_ssize_t w = m ? b[3].view.len / 4 / m : 0;
    if (b[1].view.len != b[0].view.len || b[2].view.len != b[0].view.len || b[3].view.len != m * w * 4 ||
        b[5].view.len != n * 8 || b[6].view.len != n * w * 4 || b[7].view.len != n * 8 || lo < 0 || hi >= n)
        return sizes_differ(b, 8, "late_runs");
    const uint64_t span = (uint64_t)(hi - lo);
    Py_ssize_t bad = -1;
    Py_BEGIN_ALLOW_THREADS
    /* the batch's candidate per slot: its largest row */
    for (Py_ssize_t i = 0; i < m; i++) {
        int64_t slot = idx[i];
        if ((uint64_t)(slot - lo) > span) { bad = i; break; }
        int64_t at = mark[slot] - first_row;
        if (at < 0 || at >= m ||
            compare(step[i], epoch[i], values + i * w, step[at], epoch[at], values + at * w, w) > 0)
            mark[slot] = first_row + i;
    }
    /* each candidate against the slot's stored presentation */
    for (Py_ssize_t i = 0; i < m && bad < 0; i++) {
        int64_t slot = idx[i];
        if (mark[slot] != first_row + i) continue;
        if (compare(step[i], epoch[i], values + i * w, last_step[slot], last_epoch[slot], runs + slot * w, w) > 0) {
            last_step[slot] = step[i];
            last_epoch[slot] = epoch[i];
            for (Py_ssize_t j = 0; j < w; j++) runs[slot * w + j] = values[i * w + j];
        }
    }
    Py_END_ALLOW_THREADS
    release(b, 8);
    return PyLong_FromSsize_t(bad);
}

/* early_sums(idx, pos, loss, runs, totals, n_early, scale, lo, hi)
 * idx: int64 [m]; pos: int32 [m, k]; loss: float64 [m, k]; runs: int32 [n, 2r] (start, length
 * pairs); totals: int64 [n, r]; n_early: int64 [n].
 * -> (the first row whose slot is outside [lo, hi], or -1; the largest |fixed-point loss| added,
 *    or -1 where a finite loss was too large for it: the caller then declines). */
static PyObject *early_sums(PyObject *self, PyObject *args) {
    PyObject *o[6];
    double scale;
    Py_ssize_t lo, hi;
    if (!PyArg_ParseTuple(args, "OOOOOOdnn", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &scale, &lo, &hi))
        return NULL;
    Buf b[6];
    const int writable[6] = {0, 0, 0, 0, 1, 1};
    if (get_bufs(o, b, writable, 6) < 0) { release(b, 6); return NULL; }
    const int64_t *idx = b[0].view.buf;
    const int32_t *pos = b[1].view.buf, *runs = b[3].view.buf;
    const double *loss = b[2].view.buf;
    int64_t *totals = b[4].view.buf, *n_early = b[5].view.buf;
    Py_ssize_t m = b[0].view.len / 8, n = b[5].view.len / 8;
    Py_ssize_t k = m ? b[1].view.len / 4 / m : 0;
    Py_ssize_t r = n ? b[4].view.len / 8 / n : 0;
    if (b[1].view.len != m * k * 4 || b[2].view.len != m * k * 8 || b[3].view.len != n * 2 * r * 4 ||
        b[4].view.len != n * r * 8 || lo < 0 || hi >= n)
        return sizes_differ(b, 6, "early_sums");
    const uint64_t span = (uint64_t)(hi - lo);
    Py_ssize_t bad = -1;
    int64_t most = 0; /* the largest |fixed-point loss|; -1 once a loss is too large for it */
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < m; i++) {
        int64_t slot = idx[i];
        if ((uint64_t)(slot - lo) > span) { bad = i; break; }
        if (i + PREFETCH < m) { /* rows come in random slot order: ask for a later row's lines now */
            int64_t ahead = idx[i + PREFETCH];
            if ((uint64_t)(ahead - lo) <= span) {
                __builtin_prefetch(runs + ahead * 2 * r);
                __builtin_prefetch(totals + ahead * r, 1);
                __builtin_prefetch(n_early + ahead, 1);
            }
        }
        n_early[slot] += 1;
        const int32_t *spans = runs + slot * 2 * r;
        int64_t *total = totals + slot * r;
        for (Py_ssize_t p0 = 0; p0 < k; p0 += POSITIONS_AT_ONCE) {
            /* up to POSITIONS_AT_ONCE sketched positions and their fixed-point losses, then each
             * run's sum over them: a short loop over contiguous locals, for each run */
            Py_ssize_t here = k - p0 < POSITIONS_AT_ONCE ? k - p0 : POSITIONS_AT_ONCE;
            int64_t at[POSITIONS_AT_ONCE];
            uint64_t fixed[POSITIONS_AT_ONCE];
            for (Py_ssize_t p = 0; p < here; p++) {
                double value = loss[i * k + p0 + p];
                int64_t f = 0;
                if (isfinite(value)) {
                    if (fabs(value) < LOSS_LIMIT) {
                        f = (int64_t)rint(value * scale);
                        int64_t size = f < 0 ? -f : f;
                        if (most >= 0 && size > most) most = size;
                    } else {
                        most = -1;
                    }
                }
                fixed[p] = (uint64_t)f;
                at[p] = pos[i * k + p0 + p];
            }
            for (Py_ssize_t j = 0; j < r; j++) {
                int64_t start = spans[2 * j];
                int64_t stored = spans[2 * j + 1];
                uint64_t length = stored > 0 ? (uint64_t)stored : 0;
                uint64_t sum = 0;
                for (Py_ssize_t p = 0; p < here; p++) {
                    /* start <= at < start + length, as one unsigned comparison, and the add made
                     * without a branch: which runs hold a position is unpredictable */
                    uint64_t inside = (uint64_t)(at[p] - start) < length;
                    sum += fixed[p] & -inside;
                }
                total[j] = (int64_t)((uint64_t)total[j] + sum);
            }
        }
    }
    Py_END_ALLOW_THREADS
    release(b, 6);
    return Py_BuildValue("nL", bad, (long long)most);
}

static PyMethodDef methods[] = {
    {"late_runs", late_runs, METH_VARARGS, "The hit runs of each slot's last late presentation, one batch."},
    {"early_sums", early_sums, METH_VARARGS, "Each slot's early sketched losses summed per late run, one batch."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_extract", NULL, -1, methods};

PyMODINIT_FUNC PyInit__extract(void) { return PyModule_Create(&module); }
