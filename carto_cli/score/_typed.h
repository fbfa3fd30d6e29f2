/* Arrays of any integer or float type through the buffer protocol, for carto's compiled loops
 * (_extract.c): a list column's offsets and values arrive in the type the log stores them in, and
 * are read here one list at a time, with one type switch per list, not per value. */
#ifndef CARTO_TYPED_H
#define CARTO_TYPED_H

#include <Python.h>
#include <math.h>
#include <stdint.h>

#define CHUNK 32 /* values loaded at a time into a caller's buffer (the shim's lists hold 10 or 12) */
#define LOSS_LIMIT 2147483648.0 /* |loss| below 2^31: its fixed point (x 2^32) fits int64 */
#define SCALE_BITS 32 /* the fixed point of carto_cli.score.fixedpoint: 2^32 units per nat */

/* An array of any integer or float type, as the buffer protocol describes it. */
enum { I8, I16, I32, I64, U8, U16, U32, U64, F16, F32, F64 };

typedef struct {
    Py_buffer view;
    int held, code;
    Py_ssize_t n; /* elements */
} Typed;

static int get_typed(PyObject *obj, Typed *t, const char *name) {
    t->held = 0;
    if (PyObject_GetBuffer(obj, &t->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    t->held = 1;
    const char *f = t->view.format ? t->view.format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    Py_ssize_t size = t->view.itemsize;
    int kind = 0;
    switch (*f) {
        case 'b': case 'h': case 'i': case 'l': case 'q': kind = 'i'; break;
        case 'B': case 'H': case 'I': case 'L': case 'Q': kind = 'u'; break;
        case 'e': case 'f': case 'd': kind = 'f'; break;
    }
    t->code = -1;
    if (f[0] && !f[1]) {
        if (kind == 'i') t->code = size == 1 ? I8 : size == 2 ? I16 : size == 4 ? I32 : size == 8 ? I64 : -1;
        if (kind == 'u') t->code = size == 1 ? U8 : size == 2 ? U16 : size == 4 ? U32 : size == 8 ? U64 : -1;
        if (kind == 'f') t->code = size == 2 ? F16 : size == 4 ? F32 : size == 8 ? F64 : -1;
    }
    if (t->code < 0) {
        PyErr_Format(PyExc_TypeError, "%s: an array of integers or floats is needed, got format '%s'", name,
                     t->view.format ? t->view.format : "B");
        return -1;
    }
    t->n = size ? t->view.len / size : 0;
    return 0;
}

static void release_typed(Typed *t, int n) {
    for (int i = 0; i < n; i++)
        if (t[i].held) PyBuffer_Release(&t[i].view);
}

static inline int is_float(const Typed *t) { return t->code >= F16; }

/* Elements [start, start + w) of an integer array as int64; an unsigned 64-bit value beyond
 * INT64_MAX reads as INT64_MIN, outside every range the loops accept. One switch per list. */
static inline void load_ints(const Typed *t, int64_t start, Py_ssize_t w, int64_t *out) {
    const char *p = t->view.buf;
    switch (t->code) {
        case I8: for (Py_ssize_t j = 0; j < w; j++) out[j] = ((const int8_t *)p)[start + j]; break;
        case I16: for (Py_ssize_t j = 0; j < w; j++) out[j] = ((const int16_t *)p)[start + j]; break;
        case I32: for (Py_ssize_t j = 0; j < w; j++) out[j] = ((const int32_t *)p)[start + j]; break;
        case I64: for (Py_ssize_t j = 0; j < w; j++) out[j] = ((const int64_t *)p)[start + j]; break;
        case U8: for (Py_ssize_t j = 0; j < w; j++) out[j] = ((const uint8_t *)p)[start + j]; break;
        case U16: for (Py_ssize_t j = 0; j < w; j++) out[j] = ((const uint16_t *)p)[start + j]; break;
        case U32: for (Py_ssize_t j = 0; j < w; j++) out[j] = ((const uint32_t *)p)[start + j]; break;
        default:
            for (Py_ssize_t j = 0; j < w; j++) {
                uint64_t v = ((const uint64_t *)p)[start + j];
                out[j] = v > (uint64_t)INT64_MAX ? INT64_MIN : (int64_t)v;
            }
    }
}

/* Whether every element [start, start + w) of an integer array lies in [low, high]; no check is
 * made where the type cannot hold anything else. */
static inline int ints_within(const Typed *t, int64_t start, Py_ssize_t w, int64_t low, int64_t high) {
    if ((t->code == U8 || t->code == U16) && low <= 0 && high >= UINT16_MAX) return 1;
    if ((t->code == I8 || t->code == I16 || t->code == I32) && low <= INT32_MIN && high >= INT32_MAX) return 1;
    int64_t values[CHUNK];
    for (Py_ssize_t j0 = 0; j0 < w; j0 += CHUNK) {
        Py_ssize_t here = w - j0 < CHUNK ? w - j0 : CHUNK;
        load_ints(t, start + j0, here, values);
        for (Py_ssize_t j = 0; j < here; j++)
            if (values[j] < low || values[j] > high) return 0;
    }
    return 1;
}

/* Losses [start, start + k) in fixed point, rint(loss * 2^scale_bits) (0 where not finite), as the
 * bits of int64 sums; `most` grows to the largest |value|, or becomes -1 for a loss of 2^31 nats or
 * more. A float16 is an exact multiple of 2^-24 below 2^16: its fixed point is its integer
 * significand shifted, the same integer the double path rounds to. */
static inline void load_fixed(const Typed *t, int64_t start, Py_ssize_t k, uint64_t *out, int64_t *most) {
    const char *p = t->view.buf;
    if (t->code == F16) {
        for (Py_ssize_t q = 0; q < k; q++) {
            uint16_t h = ((const uint16_t *)p)[start + q];
            unsigned exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
            uint64_t size = exponent == 31 ? 0 /* infinity or NaN: not finite */
                            : exponent == 0 ? (uint64_t)mantissa << (SCALE_BITS - 24)
                                            : (uint64_t)(mantissa | 0x400) << (exponent + SCALE_BITS - 25);
            out[q] = h >> 15 ? (uint64_t)0 - size : size;
            if (*most >= 0 && (int64_t)size > *most) *most = (int64_t)size;
        }
        return;
    }
    for (Py_ssize_t q = 0; q < k; q++) {
        double value = t->code == F32 ? ((const float *)p)[start + q] : ((const double *)p)[start + q];
        int64_t f = 0;
        if (isfinite(value)) {
            if (fabs(value) < LOSS_LIMIT) {
                f = (int64_t)rint(value * (double)((uint64_t)1 << SCALE_BITS));
                int64_t size = f < 0 ? -f : f;
                if (*most >= 0 && size > *most) *most = size;
            } else {
                *most = -1;
            }
        }
        out[q] = (uint64_t)f;
    }
}

/* Where the list at batch position `row` starts in its values, and its length; -1 where the
 * offsets do not hold that row or point outside the values. */
static inline int64_t list_at(const Typed *offsets, const Typed *values, int64_t row, int64_t *length) {
    if (row < 0 || row + 1 >= offsets->n) return -1;
    int64_t bounds[2];
    load_ints(offsets, row, 2, bounds);
    if (bounds[0] < 0 || bounds[1] < bounds[0] || bounds[1] > values->n) return -1;
    *length = bounds[1] - bounds[0];
    return bounds[0];
}

#endif
