/* The dense kernel's two per-row loops in C (see carto_cli/score/dense.py and compiled.py).
 *
 * add_rows:  for each row whose slot is in [lo, hi): its sample's packed word (or row count,
 *            epoch mask and correct mask) += the row's contribution, and the loss matrix
 *            [epoch - first_epoch, slot] = the row's loss (and the first/last step, full state).
 * loss_sums: for each slot in [lo, hi), over the loss matrix's epochs: the fixed-point loss sums
 *            (early epochs and the others) and the exact sums of p units and of their squares
 *            (split at 2^31), p units over the epochs in the slot's mask.
 *
 * Both do exactly the integer and floating-point operations of the numpy version in dense.py, in
 * the same order (round half to even by rint() in the default rounding mode; compiled with
 * -ffp-contract=off so that no multiply-add is fused), so the results are the same bits. Arrays
 * arrive through the buffer protocol (no numpy headers needed to build); the loops run without
 * the GIL, so two Python threads can each take half of the slots.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

typedef struct {
    Py_buffer view;
    int held;
} Buf;

static int get_buf(PyObject *obj, Buf *b, int writable) {
    b->held = 0;
    if (PyObject_GetBuffer(obj, &b->view, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    b->held = 1;
    return 0;
}

static void release(Buf *bufs, int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i].held) PyBuffer_Release(&bufs[i].view);
}

/* add_rows(words, n_seen, corr, losses, first_epoch, packed, n_bits, mask_bits, idx, epochs, epoch,
 *          loss, correct, steps, first_step, last_step, lo, hi)
 * words/n_seen/corr/idx/epochs/steps/first_step/last_step: int64 (n_seen, corr, epochs, steps,
 * first_step, last_step may be empty); losses: float32 or float64 (width columns); loss: float32 or
 * float64; correct: bool (1 byte). */
static PyObject *add_rows(PyObject *self, PyObject *args) {
    PyObject *o[13];
    long long first_epoch, epoch, lo, hi;
    int packed, n_bits, mask_bits;
    if (!PyArg_ParseTuple(args, "OOOOLpiiOOLOOOOOLL", &o[0], &o[1], &o[2], &o[3], &first_epoch, &packed, &n_bits,
                          &mask_bits, &o[4], &o[5], &epoch, &o[6], &o[7], &o[8], &o[9], &o[10], &lo, &hi))
        return NULL;
    Buf b[11] = {{0}};
    int writable[11] = {1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1};
    for (int i = 0; i < 11; i++)
        if (get_buf(o[i], &b[i], writable[i]) < 0) { release(b, 11); return NULL; }
    int64_t *words = b[0].view.buf, *n_seen = b[1].view.buf, *corr = b[2].view.buf;
    char *losses = b[3].view.buf;
    Py_ssize_t matrix_item = b[3].view.itemsize;
    const int64_t *idx = b[4].view.buf, *epochs = b[5].view.buf;
    const char *loss = b[6].view.buf;
    Py_ssize_t loss_item = b[6].view.itemsize;
    const uint8_t *correct = b[7].view.buf;
    const int64_t *steps = b[8].view.buf;
    int64_t *first_step = b[9].view.buf, *last_step = b[10].view.buf;
    Py_ssize_t n = b[4].view.len / 8, width = b[0].view.len / 8;
    int many = b[5].view.len > 0, full = b[8].view.len > 0;
    if ((matrix_item != 4 && matrix_item != 8) || (loss_item != 4 && loss_item != 8)) {
        release(b, 11);
        PyErr_SetString(PyExc_TypeError, "add_rows: losses must be float32 or float64");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t slot = idx[i];
        if (slot < lo || slot >= hi) continue;
        int64_t e = many ? epochs[i] : epoch;
        int64_t bit = (int64_t)1 << e;
        if (packed) {
            int64_t word = 1 + (bit << n_bits);
            if (correct[i]) word += bit << (n_bits + mask_bits);
            words[slot] += word;
        } else {
            n_seen[slot] += 1;
            words[slot] += bit;
            if (correct[i]) corr[slot] += bit;
        }
        double value = loss_item == 4 ? (double)((const float *)loss)[i] : ((const double *)loss)[i];
        Py_ssize_t cell = (Py_ssize_t)(e - first_epoch) * width + slot;
        if (matrix_item == 4)
            ((float *)losses)[cell] = loss_item == 4 ? ((const float *)loss)[i] : (float)value;
        else
            ((double *)losses)[cell] = value;
        if (full) {
            if (steps[i] < first_step[slot]) first_step[slot] = steps[i];
            if (steps[i] > last_step[slot]) last_step[slot] = steps[i];
        }
    }
    Py_END_ALLOW_THREADS
    release(b, 11);
    Py_RETURN_NONE;
}

/* loss_sums(losses, first_epoch, masks, early_epochs, table, early, late, total, high, low,
 *           step_bits, max_fixed, c1, c2, c3, scale, lo, hi) */
static PyObject *loss_sums(PyObject *self, PyObject *args) {
    PyObject *o[9];
    long long first_epoch, early_epochs, max_fixed, lo, hi;
    int step_bits;
    double c1, c2, c3, scale;
    if (!PyArg_ParseTuple(args, "OLOLOOOOOOiLddddLL", &o[0], &first_epoch, &o[1], &early_epochs, &o[2], &o[3], &o[4],
                          &o[5], &o[6], &o[7], &step_bits, &max_fixed, &c1, &c2, &c3, &scale, &lo, &hi))
        return NULL;
    Buf b[8] = {{0}};
    int writable[8] = {0, 0, 0, 1, 1, 1, 1, 1};
    for (int i = 0; i < 8; i++)
        if (get_buf(o[i], &b[i], writable[i]) < 0) { release(b, 8); return NULL; }
    const char *losses = b[0].view.buf;
    Py_ssize_t item = b[0].view.itemsize;
    const int64_t *masks = b[1].view.buf;
    const double *table = b[2].view.buf;
    int64_t *early = b[3].view.buf, *late = b[4].view.buf, *total = b[5].view.buf, *high = b[6].view.buf,
            *low = b[7].view.buf;
    Py_ssize_t width = b[1].view.len / 8;
    Py_ssize_t rows = width ? b[0].view.len / item / width : 0;
    int64_t step_mask = ((int64_t)1 << step_bits) - 1;
    const int64_t sq_mask = ((int64_t)1 << 31) - 1;
    if (item != 4 && item != 8) {
        release(b, 8);
        PyErr_SetString(PyExc_TypeError, "loss_sums: the loss matrix must be float32 or float64");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t slot = lo; slot < hi; slot++) {
        int64_t mask = masks[slot];
        int64_t early_sum = 0, late_sum = 0, prob = 0, sq_hi = 0, sq_lo = 0;
        for (Py_ssize_t row = 0; row < rows; row++) {
            int64_t e = first_epoch + row;
            Py_ssize_t cell = row * width + slot;
            double value = item == 4 ? (double)((const float *)losses)[cell] : ((const double *)losses)[cell];
            int64_t fixed = (int64_t)rint(value * scale);
            if (e < early_epochs) early_sum += fixed; else late_sum += fixed;
            if ((mask >> e) & 1) {
                int64_t clipped = fixed < 0 ? 0 : (fixed > max_fixed ? max_fixed : fixed);
                double r = (double)(clipped & step_mask);
                double poly = r * c3;
                poly += c2;
                poly *= r;
                poly += c1;
                poly *= r;
                poly += 1.0;
                poly *= table[clipped >> step_bits];
                int64_t units = (int64_t)rint(poly);
                prob += units;
                int64_t square = units * units;
                sq_lo += square & sq_mask;
                sq_hi += square >> 31;
            }
        }
        early[slot] += early_sum;
        late[slot] += late_sum;
        total[slot] += prob;
        high[slot] += sq_hi;
        low[slot] += sq_lo;
    }
    Py_END_ALLOW_THREADS
    release(b, 8);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"add_rows", add_rows, METH_VARARGS, "The dense kernel's per-row adds and loss-matrix stores."},
    {"loss_sums", loss_sums, METH_VARARGS, "The dense kernel's per-slot sums over the loss matrix."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_dense", NULL, -1, methods};

PyMODINIT_FUNC PyInit__dense(void) { return PyModule_Create(&module); }
