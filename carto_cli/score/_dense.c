/* The dense kernel's loops in C (see carto_cli/score/dense.py and compiled.py).
 *
 * add_rows: for each row: its sample's packed word (or row count, epoch mask and correct mask)
 *           += the row's contribution, and the loss matrix [epoch - first_epoch, slot] = the
 *           row's loss (and the first/last step, full state). Every row's slot is checked against
 *           the bounds the caller gives (its row group's footer range) and its epoch against the
 *           loss matrix, whatever the file held: the first row outside them stops the loop and is
 *           returned, for the caller to report the part as damaged.
 * survey:   over slots [lo, hi): how many were seen, the largest row count, and the totals of the
 *           packed fields (to detect a field that overflowed into the next).
 * finish:   over slots [lo, hi): the score columns of every seen slot, written from position
 *           `at` on: the fixed-point loss sums and exact sums of p units over the loss matrix, and
 *           from them difficulty, mean loss, confidence, variability, correctness, memorization
 *           and the counts, as state.finalize computes them; a flag for the slots whose bitmask
 *           conditions fail (a repeat within an epoch, a gap), which the caller recounts.
 * place:    over slots [lo, hi): difficulty and memorization only (what the quadrant thresholds
 *           need), at position slot - lo, with the same flag; no output for an unseen slot but
 *           invalid values. Reads the early rows of the loss matrix only.
 *
 * Every operation is the numpy version's (dense.py) and Polars' (state.finalize), in the same
 * order: round half to even by rint() in the default rounding mode, integer sums that do not
 * depend on order, the variance's numerator in 128-bit integers converted once to double, and no
 * fused multiply-add (built with -ffp-contract=off), so the results are the same bits. Arrays
 * arrive through the buffer protocol (no numpy headers needed to build); survey and finish run
 * without the GIL, so two Python threads can each take a range of slots.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

#include "_buffers.h"

#ifndef __SIZEOF_INT128__
#error "carto's compiled kernel needs 128-bit integers (gcc or clang); pip then installs carto without it"
#endif

#define PREFETCH 16 /* rows ahead (add_rows) */

/* The packed layout (dense.py): n in the low n_bits bits, then the seen mask and the correct
 * mask, mask_bits bits each. Unpacked: three arrays. */
typedef struct {
    const uint64_t *words, *n_seen, *corr;
    int packed, n_bits, mask_bits;
} Fields;

static inline void fields_at(const Fields *f, Py_ssize_t slot, uint64_t *n, uint64_t *seen, uint64_t *corr) {
    uint64_t w = f->words[slot];
    if (f->packed) {
        uint64_t mask = ((uint64_t)1 << f->mask_bits) - 1;
        *n = w & (((uint64_t)1 << f->n_bits) - 1);
        *seen = (w >> f->n_bits) & mask;
        *corr = w >> (f->n_bits + f->mask_bits);
    } else {
        *n = f->n_seen[slot];
        *seen = w;
        *corr = f->corr[slot];
    }
}

/* add_rows(words, n_seen, corr, losses, first_epoch, packed, n_bits, mask_bits, idx, epochs, epoch,
 *          loss, correct, steps, first_step, last_step, lo, hi)
 * words/n_seen/corr/idx/epochs/steps/first_step/last_step: int64 (n_seen, corr, epochs, steps,
 * first_step, last_step may be empty); losses: float32 or float64 (width columns); loss: float32 or
 * float64; correct: bool (1 byte). lo, hi: the slots rows may have (0 <= lo, hi < width).
 * -> -1, or the index of the first row whose slot lies outside [lo, hi] or whose epoch has no row of
 * the loss matrix (nothing of that row or after it is added). */
static PyObject *add_rows(PyObject *self, PyObject *args) {
    PyObject *o[11];
    long long first_epoch, epoch;
    int packed, n_bits, mask_bits;
    Py_ssize_t lo, hi;
    if (!PyArg_ParseTuple(args, "OOOOLpiiOOLOOOOOnn", &o[0], &o[1], &o[2], &o[3], &first_epoch, &packed, &n_bits,
                          &mask_bits, &o[4], &o[5], &epoch, &o[6], &o[7], &o[8], &o[9], &o[10], &lo, &hi))
        return NULL;
    Buf b[11];
    const int writable[11] = {1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1};
    if (get_bufs(o, b, writable, 11) < 0) { release(b, 11); return NULL; }
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
    Py_ssize_t rows = width ? b[3].view.len / matrix_item / width : 0;
    /* every array as long as the loops below read or write it */
    if (b[3].view.len != rows * width * matrix_item || (!packed && (b[1].view.len != width * 8 ||
        b[2].view.len != width * 8)) || (many && b[5].view.len != n * 8) || b[6].view.len != n * loss_item ||
        b[7].view.len != n || (full && (b[8].view.len != n * 8 || b[9].view.len != width * 8 ||
        b[10].view.len != width * 8)) || lo < 0 || hi >= width || (!many && (epoch < first_epoch ||
        epoch - first_epoch >= rows || epoch < 0 || epoch > 63))) {
        release(b, 11);
        PyErr_SetString(PyExc_ValueError, "add_rows: the arrays' sizes, the slot bounds or the epoch do not match");
        return NULL;
    }
    const uint64_t span = (uint64_t)(hi - lo); /* a slot s is inside when (uint64)(s - lo) <= span */
    Py_ssize_t bad = -1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        /* rows arrive in random slot order: ask for the cache lines of a row PREFETCH rows ahead,
         * so that many misses are in flight at once (the loop is bound by memory latency) */
        if (i + PREFETCH < n) {
            int64_t ahead = idx[i + PREFETCH];
            int64_t ahead_epoch = many ? epochs[i + PREFETCH] : epoch;
            if ((uint64_t)(ahead - lo) <= span && (uint64_t)(ahead_epoch - first_epoch) < (uint64_t)rows) {
                __builtin_prefetch(&words[ahead], 1);
                __builtin_prefetch(losses + ((Py_ssize_t)(ahead_epoch - first_epoch) * width + ahead) * matrix_item,
                                   1);
                if (!packed) {
                    __builtin_prefetch(&n_seen[ahead], 1);
                    __builtin_prefetch(&corr[ahead], 1);
                }
            }
        }
        int64_t slot = idx[i];
        int64_t e = many ? epochs[i] : epoch;
        /* the one compare per row that keeps every store inside the arrays, whatever the file held
         * (and, with several epochs per row, one more for the epoch's row and bit) */
        if ((uint64_t)(slot - lo) > span ||
            (many && ((uint64_t)(e - first_epoch) >= (uint64_t)rows || (uint64_t)e > 63))) {
            bad = i;
            break;
        }
        /* the bits as numpy's int64 arithmetic makes them (two's complement, wrapping) */
        uint64_t bit = (uint64_t)1 << e;
        if (packed) {
            uint64_t word = 1 + (bit << n_bits);
            if (correct[i]) word += bit << (n_bits + mask_bits);
            words[slot] = (int64_t)((uint64_t)words[slot] + word);
        } else {
            n_seen[slot] += 1;
            words[slot] = (int64_t)((uint64_t)words[slot] + bit);
            if (correct[i]) corr[slot] = (int64_t)((uint64_t)corr[slot] + bit);
        }
        Py_ssize_t cell = (Py_ssize_t)(e - first_epoch) * width + slot;
        if (matrix_item == 4)
            ((float *)losses)[cell] = loss_item == 4 ? ((const float *)loss)[i] : (float)((const double *)loss)[i];
        else
            ((double *)losses)[cell] = loss_item == 4 ? (double)((const float *)loss)[i] : ((const double *)loss)[i];
        if (full) {
            if (steps[i] < first_step[slot]) first_step[slot] = steps[i];
            if (steps[i] > last_step[slot]) last_step[slot] = steps[i];
        }
    }
    Py_END_ALLOW_THREADS
    release(b, 11);
    return PyLong_FromSsize_t(bad);
}

/* survey(words, n_seen, corr, packed, n_bits, mask_bits, lo, hi)
 * -> (seen slots, largest n, sum of n, sum of seen masks, sum of correct masks); the sums as Python
 * ints (exact). */
static PyObject *survey(PyObject *self, PyObject *args) {
    PyObject *o[3];
    int packed, n_bits, mask_bits;
    Py_ssize_t lo, hi;
    if (!PyArg_ParseTuple(args, "OOOpiinn", &o[0], &o[1], &o[2], &packed, &n_bits, &mask_bits, &lo, &hi))
        return NULL;
    Buf b[3];
    const int writable[3] = {0, 0, 0};
    if (get_bufs(o, b, writable, 3) < 0) { release(b, 3); return NULL; }
    Py_ssize_t width = b[0].view.len / 8;
    if (lo < 0 || hi > width || lo > hi || (!packed && (b[1].view.len != width * 8 || b[2].view.len != width * 8))) {
        release(b, 3);
        PyErr_SetString(PyExc_ValueError, "survey: the slots or the arrays' sizes do not match");
        return NULL;
    }
    Fields f = {b[0].view.buf, b[1].view.buf, b[2].view.buf, packed, n_bits, mask_bits};
    Py_ssize_t present = 0;
    uint64_t most = 0;
    unsigned __int128 n_total = 0, seen_total = 0, corr_total = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t slot = lo; slot < hi; slot++) {
        uint64_t n, seen, corr;
        fields_at(&f, slot, &n, &seen, &corr);
        present += n > 0;
        if (n > most) most = n;
        n_total += n;
        seen_total += seen;
        corr_total += corr;
    }
    Py_END_ALLOW_THREADS
    release(b, 3);
    PyObject *totals[3] = {NULL, NULL, NULL};
    unsigned __int128 values[3] = {n_total, seen_total, corr_total};
    for (int i = 0; i < 3; i++) {
        PyObject *high = PyLong_FromUnsignedLongLong((unsigned long long)(values[i] >> 64));
        PyObject *low = PyLong_FromUnsignedLongLong((unsigned long long)values[i]);
        PyObject *shift = PyLong_FromLong(64);
        PyObject *shifted = high && shift ? PyNumber_Lshift(high, shift) : NULL;
        totals[i] = shifted && low ? PyNumber_Or(shifted, low) : NULL;
        Py_XDECREF(high); Py_XDECREF(low); Py_XDECREF(shift); Py_XDECREF(shifted);
        if (!totals[i]) { Py_XDECREF(totals[0]); Py_XDECREF(totals[1]); return NULL; }
    }
    return Py_BuildValue("nKNNN", present, (unsigned long long)most, totals[0], totals[1], totals[2]);
}

/* The formulas finish and place share (state.finalize's operations, in its order). */
static inline int64_t fixed_point(double loss, double scale) { return (int64_t)rint(loss * scale); }

static inline double loss_value(const char *losses, Py_ssize_t item, Py_ssize_t cell) {
    return item == 4 ? (double)((const float *)losses)[cell] : ((const double *)losses)[cell];
}

static inline int64_t forget_count(uint64_t seen, uint64_t corr) {
    /* a correct pass followed by an incorrect one, within the seen passes */
    return __builtin_popcountll(corr & ~(corr >> 1) & (seen >> 1));
}

/* difficulty: the mean early loss; invalid without an early presentation */
static inline void difficulty_of(int64_t early_sum, int64_t n_early, double scale, double *value, uint8_t *valid) {
    *valid = n_early > 0;
    *value = n_early > 0 ? (double)early_sum / scale / (double)n_early : 0.0;
}

/* memorization: forget events / transitions; never learned: 0, 1 or invalid (never_learned 0, 1, 2) */
static inline void memorization_of(uint64_t corr, int64_t forgets, int64_t count, int never_learned, double *value,
                                   uint8_t *valid) {
    if (corr > 0) {
        *value = (double)forgets / (double)(count - 1 > 1 ? count - 1 : 1);
        *valid = 1;
    } else {
        *value = never_learned == 1 ? 1.0 : 0.0;
        *valid = never_learned != 2;
    }
}

/* a sample the bitmask conditions do not hold for: a repeat within an epoch (the popcount falls
 * short of the row count) or a gap between epochs */
static inline uint8_t is_irregular(uint64_t seen, int64_t count) {
    int first = __builtin_ctzll(seen), last = 63 - __builtin_clzll(seen);
    return !((int64_t)__builtin_popcountll(seen) == count && count == last - first + 1);
}

/* finish(words, n_seen, corr, packed, n_bits, mask_bits, losses, first_epoch, early_epochs, table,
 *        step_bits, max_fixed, c1, c2, c3, scale, prob_scale, sq_split_bits, never_learned, first_id,
 *        stride, lo, hi, at, <outputs>)
 * never_learned: 0 zero, 1 max, 2 exclude. Outputs (one element per seen slot, from position at):
 * sample_id (int64 bits), difficulty, difficulty_valid, memorization, memorization_valid,
 * forget_events, n_seen, n_correct, ever_learned, first_learned_epoch, first_learned_valid,
 * mean_loss, confidence, variability, correctness, irregular; *_valid, ever_learned and irregular
 * one byte each. */
#define N_OUT 16
static PyObject *finish(PyObject *self, PyObject *args) {
    PyObject *o[5 + N_OUT];
    int packed, n_bits, mask_bits, step_bits, sq_bits, never_learned;
    long long first_epoch, early_epochs, max_fixed, stride;
    unsigned long long first_id;
    double c1, c2, c3, scale, prob_scale;
    Py_ssize_t lo, hi, at;
    if (!PyArg_ParseTuple(args, "OOOpiiOLLOiLdddddiiKLnnn" "OOOOOOOOOOOOOOOO", &o[0], &o[1], &o[2], &packed, &n_bits,
                          &mask_bits, &o[3], &first_epoch, &early_epochs, &o[4], &step_bits, &max_fixed, &c1, &c2,
                          &c3, &scale, &prob_scale, &sq_bits, &never_learned, &first_id, &stride, &lo, &hi, &at,
                          &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12], &o[13], &o[14], &o[15], &o[16],
                          &o[17], &o[18], &o[19], &o[20]))
        return NULL;
    Buf b[5 + N_OUT];
    int writable[5 + N_OUT];
    for (int i = 0; i < 5 + N_OUT; i++) writable[i] = i >= 5;
    if (get_bufs(o, b, writable, 5 + N_OUT) < 0) { release(b, 5 + N_OUT); return NULL; }
    Fields f = {b[0].view.buf, b[1].view.buf, b[2].view.buf, packed, n_bits, mask_bits};
    const char *losses = b[3].view.buf;
    Py_ssize_t item = b[3].view.itemsize;
    const double *table = b[4].view.buf;
    int64_t *sample_id = b[5].view.buf;
    double *difficulty = b[6].view.buf;
    uint8_t *difficulty_valid = b[7].view.buf;
    double *memorization = b[8].view.buf;
    uint8_t *memorization_valid = b[9].view.buf;
    int64_t *forget_events = b[10].view.buf, *n_seen_out = b[11].view.buf, *n_correct = b[12].view.buf;
    uint8_t *ever_learned = b[13].view.buf;
    int64_t *first_learned = b[14].view.buf;
    uint8_t *first_learned_valid = b[15].view.buf;
    double *mean_loss = b[16].view.buf, *confidence = b[17].view.buf, *variability = b[18].view.buf,
           *correctness = b[19].view.buf;
    uint8_t *irregular = b[20].view.buf;
    Py_ssize_t width = b[0].view.len / 8;
    Py_ssize_t rows = width ? b[3].view.len / item / width : 0;
    if (item != 4 && item != 8) {
        release(b, 5 + N_OUT);
        PyErr_SetString(PyExc_TypeError, "finish: the loss matrix must be float32 or float64");
        return NULL;
    }
    /* every output holds as many elements as the sample_id column (the seen slots, from survey) */
    Py_ssize_t n_out = b[5].view.len / 8;
    int sizes_differ = lo < 0 || hi > width || lo > hi || at < 0 || first_epoch < 0 || first_epoch + rows > 64 ||
                       (!packed && (b[1].view.len != width * 8 || b[2].view.len != width * 8)) ||
                       b[4].view.len / 8 <= (Py_ssize_t)(max_fixed >> step_bits);
    for (int i = 6; i < 5 + N_OUT; i++)
        if (b[i].view.len / b[i].view.itemsize != n_out) sizes_differ = 1;
    if (sizes_differ) {
        release(b, 5 + N_OUT);
        PyErr_SetString(PyExc_ValueError, "finish: the slots, the epochs or the arrays' sizes do not match");
        return NULL;
    }
    const int64_t step_mask = ((int64_t)1 << step_bits) - 1;
    const int64_t sq_mask = ((int64_t)1 << sq_bits) - 1;
    const uint64_t early_mask = early_epochs >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << early_epochs) - 1);
    Py_ssize_t out = at;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t slot = lo; slot < hi; slot++) {
        uint64_t n, seen, corr;
        fields_at(&f, slot, &n, &seen, &corr);
        if (!n) continue;
        if (out >= n_out) break; /* more seen slots than survey counted: the caller's assert reports it */
        /* the loss matrix's column: fixed-point sums of all epochs (0 where unseen), p over seen ones */
        int64_t early_sum = 0, late_sum = 0, prob = 0, sq_hi = 0, sq_lo = 0;
        for (Py_ssize_t row = 0; row < rows; row++) {
            int64_t e = first_epoch + row;
            Py_ssize_t cell = row * width + slot;
            int64_t fixed = fixed_point(loss_value(losses, item, cell), scale);
            if (e < early_epochs) early_sum += fixed; else late_sum += fixed;
            if ((seen >> e) & 1) {
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
                sq_hi += square >> sq_bits;
            }
        }
        int64_t count = (int64_t)n;
        irregular[out] = is_irregular(seen, count);
        sample_id[out] = (int64_t)((uint64_t)first_id + (uint64_t)slot * (uint64_t)stride);
        int64_t n_early = __builtin_popcountll(seen & early_mask);
        int64_t correct = __builtin_popcountll(corr);
        int64_t forgets = forget_count(seen, corr);
        double dn = (double)count;
        difficulty_of(early_sum, n_early, scale, &difficulty[out], &difficulty_valid[out]);
        mean_loss[out] = (double)(early_sum + late_sum) / scale / dn;
        confidence[out] = (double)prob / prob_scale / dn;
        __int128 squares = (__int128)sq_hi * ((__int128)1 << sq_bits) + sq_lo;
        __int128 scaled_variance = (__int128)count * squares - (__int128)prob * prob;
        variability[out] = sqrt((double)scaled_variance) / dn / prob_scale;
        correctness[out] = (double)correct / dn;
        n_seen_out[out] = count;
        n_correct[out] = correct;
        forget_events[out] = forgets;
        ever_learned[out] = corr > 0;
        first_learned_valid[out] = corr > 0;
        first_learned[out] = corr > 0 ? __builtin_ctzll(corr) : 0;
        memorization_of(corr, forgets, count, never_learned, &memorization[out], &memorization_valid[out]);
        out++;
    }
    Py_END_ALLOW_THREADS
    release(b, 5 + N_OUT);
    return PyLong_FromSsize_t(out - at);
}

/* place(words, n_seen, corr, packed, n_bits, mask_bits, losses, first_epoch, early_epochs, scale,
 *       never_learned, lo, hi, difficulty, difficulty_valid, memorization, memorization_valid, irregular)
 * Outputs at position slot - lo, one element per slot of [lo, hi): finish's difficulty and
 * memorization (invalid for an unseen slot) and its irregular flag (0 for an unseen slot). */
static PyObject *place(PyObject *self, PyObject *args) {
    PyObject *o[9];
    int packed, n_bits, mask_bits, never_learned;
    long long first_epoch, early_epochs;
    double scale;
    Py_ssize_t lo, hi;
    if (!PyArg_ParseTuple(args, "OOOpiiOLLdinnOOOOO", &o[0], &o[1], &o[2], &packed, &n_bits, &mask_bits, &o[3],
                          &first_epoch, &early_epochs, &scale, &never_learned, &lo, &hi, &o[4], &o[5], &o[6], &o[7],
                          &o[8]))
        return NULL;
    Buf b[9];
    const int writable[9] = {0, 0, 0, 0, 1, 1, 1, 1, 1};
    if (get_bufs(o, b, writable, 9) < 0) { release(b, 9); return NULL; }
    Fields f = {b[0].view.buf, b[1].view.buf, b[2].view.buf, packed, n_bits, mask_bits};
    const char *losses = b[3].view.buf;
    Py_ssize_t item = b[3].view.itemsize;
    double *difficulty = b[4].view.buf, *memorization = b[6].view.buf;
    uint8_t *difficulty_valid = b[5].view.buf, *memorization_valid = b[7].view.buf, *irregular = b[8].view.buf;
    Py_ssize_t width = b[0].view.len / 8;
    Py_ssize_t rows = width ? b[3].view.len / item / width : 0;
    if ((item != 4 && item != 8) || b[4].view.len / 8 < hi - lo || b[8].view.len < hi - lo || lo < 0 || hi > width ||
        lo > hi || b[5].view.len < hi - lo || b[6].view.len / 8 < hi - lo || b[7].view.len < hi - lo ||
        (!packed && (b[1].view.len != width * 8 || b[2].view.len != width * 8))) {
        release(b, 9);
        PyErr_SetString(PyExc_ValueError, "place: a float32/float64 loss matrix and hi - lo outputs are needed");
        return NULL;
    }
    /* the loss matrix's rows of early epochs: the only ones difficulty reads */
    Py_ssize_t early_rows = early_epochs - first_epoch;
    if (early_rows < 0) early_rows = 0;
    if (early_rows > rows) early_rows = rows;
    const uint64_t early_mask = early_epochs >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << early_epochs) - 1);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t slot = lo; slot < hi; slot++) {
        Py_ssize_t out = slot - lo;
        uint64_t n, seen, corr;
        fields_at(&f, slot, &n, &seen, &corr);
        if (!n) {
            difficulty[out] = memorization[out] = 0.0;
            difficulty_valid[out] = memorization_valid[out] = irregular[out] = 0;
            continue;
        }
        int64_t early_sum = 0;
        for (Py_ssize_t row = 0; row < early_rows; row++)
            early_sum += fixed_point(loss_value(losses, item, row * width + slot), scale);
        int64_t count = (int64_t)n;
        irregular[out] = is_irregular(seen, count);
        difficulty_of(early_sum, __builtin_popcountll(seen & early_mask), scale, &difficulty[out],
                      &difficulty_valid[out]);
        memorization_of(corr, forget_count(seen, corr), count, never_learned, &memorization[out],
                        &memorization_valid[out]);
    }
    Py_END_ALLOW_THREADS
    release(b, 9);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"add_rows", add_rows, METH_VARARGS, "The dense kernel's per-row adds and loss-matrix stores."},
    {"survey", survey, METH_VARARGS, "Seen slots, the largest row count and the packed fields' totals."},
    {"finish", finish, METH_VARARGS, "The score columns of the seen slots, from the sums and the loss matrix."},
    {"place", place, METH_VARARGS, "Difficulty and memorization of every slot: what the quadrant thresholds need."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_dense", NULL, -1, methods};

PyMODINIT_FUNC PyInit__dense(void) { return PyModule_Create(&module); }
