/* The `extractable` signal's per-row loops in C (see carto_cli/score/extract.py, whose numpy
 * version they replace where the extension was built, with the same results).
 *
 * late_runs:  the late pass over one batch of sketched rows: per sample slot, the hit runs of its
 *             last presentation (largest step, then largest epoch). Within the batch, a slot's
 *             candidate is its row with the largest (step, epoch), the later row on a tie (as the
 *             numpy version's stable sort takes it); the candidate replaces the slot's stored runs
 *             only when strictly later than them.
 * early_sums: the early pass over one batch: per row, n_early[slot] += 1, and each sketched loss
 *             in fixed point (rint(loss * scale), 0 where not finite) added to the slot's total of
 *             every late run [start, start + length) that holds its position. Integer sums: the
 *             order of the rows does not matter.
 *
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

/* the n buffers released, and the call's result: None, or the error its checks found */
static PyObject *released(Buf *b, int n, const char *name, int sizes_differ, int bad_slot) {
    release(b, n);
    if (sizes_differ) {
        PyErr_Format(PyExc_ValueError, "%s: the arrays' sizes do not match", name);
        return NULL;
    }
    if (bad_slot) {
        PyErr_Format(PyExc_IndexError, "%s: a slot out of range", name);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* late_runs(idx, step, epoch, values, last_step, last_epoch, runs, mark, first_row)
 * idx/step/epoch: int64 [m]; values: int32 [m, w]; last_step/last_epoch: int64 [n]; runs: int32
 * [n, w]; mark: int64 [n], a slot's candidate row as first_row + its index in the batch (first_row:
 * this batch's first row over the whole pass, so a mark below it is from an earlier batch). */
static PyObject *late_runs(PyObject *self, PyObject *args) {
    PyObject *o[8];
    long long first_row;
    if (!PyArg_ParseTuple(args, "OOOOOOOOL", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &first_row))
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
        b[5].view.len != n * 8 || b[6].view.len != n * w * 4 || b[7].view.len != n * 8)
        return released(b, 8, "late_runs", 1, 0);
    int bad_slot = 0;
    Py_BEGIN_ALLOW_THREADS
    /* the batch's candidate per slot */
    for (Py_ssize_t i = 0; i < m; i++) {
        int64_t slot = idx[i];
        if (slot < 0 || slot >= n) { bad_slot = 1; break; }
        int64_t at = mark[slot] - first_row;
        if (at < 0 || at >= m || step[i] > step[at] || (step[i] == step[at] && epoch[i] >= epoch[at]))
            mark[slot] = first_row + i;
    }
    /* each candidate against the slot's stored presentation */
    for (Py_ssize_t i = 0; i < m && !bad_slot; i++) {
        int64_t slot = idx[i];
        if (mark[slot] != first_row + i) continue;
        if (step[i] > last_step[slot] || (step[i] == last_step[slot] && epoch[i] > last_epoch[slot])) {
            last_step[slot] = step[i];
            last_epoch[slot] = epoch[i];
            for (Py_ssize_t j = 0; j < w; j++) runs[slot * w + j] = values[i * w + j];
        }
    }
    Py_END_ALLOW_THREADS
    return released(b, 8, "late_runs", 0, bad_slot);
}

/* early_sums(idx, pos, loss, runs, totals, n_early, scale)
 * idx: int64 [m]; pos: int32 [m, k]; loss: float64 [m, k]; runs: int32 [n, 2r] (start, length
 * pairs); totals: int64 [n, r]; n_early: int64 [n]. */
static PyObject *early_sums(PyObject *self, PyObject *args) {
    PyObject *o[6];
    double scale;
    if (!PyArg_ParseTuple(args, "OOOOOOd", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &scale))
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
        b[4].view.len != n * r * 8)
        return released(b, 6, "early_sums", 1, 0);
    int bad_slot = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < m; i++) {
        int64_t slot = idx[i];
        if (slot < 0 || slot >= n) { bad_slot = 1; break; }
        if (i + PREFETCH < m) { /* rows come in random slot order: ask for a later row's lines now */
            int64_t ahead = idx[i + PREFETCH];
            if (ahead >= 0 && ahead < n) {
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
            int64_t at[POSITIONS_AT_ONCE], fixed[POSITIONS_AT_ONCE];
            for (Py_ssize_t p = 0; p < here; p++) {
                double value = loss[i * k + p0 + p];
                fixed[p] = isfinite(value) ? (int64_t)rint(value * scale) : 0;
                at[p] = pos[i * k + p0 + p];
            }
            for (Py_ssize_t j = 0; j < r; j++) {
                int64_t start = spans[2 * j];
                uint64_t length = (uint64_t)(int64_t)spans[2 * j + 1];
                int64_t sum = 0;
                for (Py_ssize_t p = 0; p < here; p++) {
                    /* start <= at < start + length, as one unsigned comparison (length >= 0), and
                     * the add made without a branch: which runs hold a position is unpredictable */
                    uint64_t inside = (uint64_t)(at[p] - start) < length;
                    sum += fixed[p] & -(int64_t)inside;
                }
                total[j] += sum;
            }
        }
    }
    Py_END_ALLOW_THREADS
    return released(b, 6, "early_sums", 0, bad_slot);
}

static PyMethodDef methods[] = {
    {"late_runs", late_runs, METH_VARARGS, "The hit runs of each slot's last late presentation, one batch."},
    {"early_sums", early_sums, METH_VARARGS, "Each slot's early sketched losses summed per late run, one batch."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_extract", NULL, -1, methods};

PyMODINIT_FUNC PyInit__extract(void) { return PyModule_Create(&module); }
