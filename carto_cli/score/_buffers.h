/* Arrays through the buffer protocol, for carto's compiled loops (_dense.c, _extract.c): get n
 * buffers (writable where asked, C-contiguous), and release those held. */
#ifndef CARTO_BUFFERS_H
#define CARTO_BUFFERS_H

#include <Python.h>

typedef struct {
    Py_buffer view;
    int held;
} Buf;

static inline int get_bufs(PyObject **objs, Buf *b, const int *writable, int n) {
    for (int i = 0; i < n; i++) b[i].held = 0;
    for (int i = 0; i < n; i++) {
        if (PyObject_GetBuffer(objs[i], &b[i].view, (writable[i] ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0)
            return -1;
        b[i].held = 1;
    }
    return 0;
}

static inline void release(Buf *bufs, int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i].held) PyBuffer_Release(&bufs[i].view);
}

#endif
