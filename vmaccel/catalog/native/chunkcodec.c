/* vmaccel.catalog._chunkcodec: the chunk codec's per-block work, a batch per GIL release.
 *
 * The pure-Python codec (codec.py) calls zstd and BLAKE3 once per 64 KiB block; each call
 * releases the GIL and takes it back, and on two cores the threads spend their time waiting to
 * re-take it. These functions do a whole task (typically 16-64 blocks) in one release. They
 * compute exactly what codec.py computes, with the same libraries' algorithms: BLAKE3-256
 * (keyed when a key is given) and zstd frames with the content size written.
 *
 *   chunk_ids(data, block_size, key) -> list[bytes | None]
 *       the id of each block of data (the last one may be short); None for an all-zero block.
 *   compress_many(blocks, level) -> list[tuple[bytes | None, int]]
 *       per block: its zstd frame if smaller than the block, else None; and the crc32 of what
 *       is stored (the frame, or the block itself).
 *   decode_many(items, key) -> list[bytes | str | None]
 *       items are (chunk_id, compressed, payload, out); each payload is decoded and checked
 *       against its id. out is either a writable buffer of exactly the plaintext length, filled
 *       in place (the item's result is None), or that length as an int (the result is a new
 *       bytes object). A failed item's result says why: "undecodable: <zstd error>" or
 *       "mismatch" (wrong length or wrong content hash); its buffer holds unspecified bytes.
 *
 * zstd contexts are per thread (freed when the thread ends). Buffers are held with
 * PyObject_GetBuffer for the whole call, so the GIL can be released while they are used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "blake3.h"

#define ID_LEN 32

static pthread_key_t cctx_key, dctx_key;

static void free_cctx(void *p) { ZSTD_freeCCtx((ZSTD_CCtx *)p); }
static void free_dctx(void *p) { ZSTD_freeDCtx((ZSTD_DCtx *)p); }

static ZSTD_CCtx *thread_cctx(void) {
    ZSTD_CCtx *c = pthread_getspecific(cctx_key);
    if (c == NULL && (c = ZSTD_createCCtx()) != NULL) pthread_setspecific(cctx_key, c);
    return c;
}

static ZSTD_DCtx *thread_dctx(void) {
    ZSTD_DCtx *d = pthread_getspecific(dctx_key);
    if (d == NULL && (d = ZSTD_createDCtx()) != NULL) pthread_setspecific(dctx_key, d);
    return d;
}

/* key: None or 32 bytes. Sets *out to NULL (unkeyed) or the key's bytes. */
static int parse_key(PyObject *key, const uint8_t **out) {
    *out = NULL;
    if (key == Py_None) return 0;
    if (!PyBytes_Check(key) || PyBytes_GET_SIZE(key) != BLAKE3_KEY_LEN) {
        PyErr_SetString(PyExc_ValueError, "key must be None or 32 bytes");
        return -1;
    }
    *out = (const uint8_t *)PyBytes_AS_STRING(key);
    return 0;
}

static void hash_block(const uint8_t *key, const void *data, size_t n, uint8_t *id) {
    blake3_hasher h;
    if (key) blake3_hasher_init_keyed(&h, key);
    else blake3_hasher_init(&h);
    blake3_hasher_update(&h, data, n);
    blake3_hasher_finalize(&h, id, ID_LEN);
}

static int all_zero(const uint8_t *p, size_t n) {
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

static PyObject *chunk_ids(PyObject *self, PyObject *args) {
    Py_buffer data;
    Py_ssize_t bs;
    PyObject *key_obj, *result = NULL;
    const uint8_t *key;
    if (!PyArg_ParseTuple(args, "y*nO", &data, &bs, &key_obj)) return NULL;
    if (bs <= 0 || parse_key(key_obj, &key) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "block_size must be positive");
        PyBuffer_Release(&data);
        return NULL;
    }
    Py_ssize_t count = (data.len + bs - 1) / bs;
    uint8_t *ids = PyMem_Malloc(count ? count * ID_LEN : 1);
    char *zero = PyMem_Malloc(count ? count : 1);
    if (ids == NULL || zero == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const uint8_t *base = data.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        size_t n = (size_t)(i == count - 1 ? data.len - i * bs : bs);
        zero[i] = (char)all_zero(base + i * bs, n);
        if (!zero[i]) hash_block(key, base + i * bs, n, ids + i * ID_LEN);
    }
    Py_END_ALLOW_THREADS
    if ((result = PyList_New(count)) == NULL) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = zero[i] ? Py_NewRef(Py_None)
                                 : PyBytes_FromStringAndSize((char *)ids + i * ID_LEN, ID_LEN);
        if (item == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, item);
    }
done:
    PyMem_Free(ids);
    PyMem_Free(zero);
    PyBuffer_Release(&data);
    return result;
}

/* Release the first n buffers of views. */
static void release_all(Py_buffer *views, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) PyBuffer_Release(&views[i]);
}

static PyObject *compress_many(PyObject *self, PyObject *args) {
    PyObject *blocks, *seq, *result = NULL;
    int level;
    if (!PyArg_ParseTuple(args, "Oi", &blocks, &level)) return NULL;
    if ((seq = PySequence_Fast(blocks, "blocks must be a sequence")) == NULL) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq), held = 0;
    Py_buffer *views = PyMem_Calloc(count ? count : 1, sizeof(Py_buffer));
    PyObject **frames = PyMem_Calloc(count ? count : 1, sizeof(PyObject *));
    size_t *sizes = PyMem_Calloc(count ? count : 1, sizeof(size_t));
    unsigned long *crcs = PyMem_Calloc(count ? count : 1, sizeof(unsigned long));
    if (views == NULL || frames == NULL || sizes == NULL || crcs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; held < count; held++) {
        PyObject *b = PySequence_Fast_GET_ITEM(seq, held);
        if (PyObject_GetBuffer(b, &views[held], PyBUF_SIMPLE) < 0) goto done;
        frames[held] = PyBytes_FromStringAndSize(NULL, ZSTD_compressBound(views[held].len));
        if (frames[held] == NULL) {
            held++;
            goto done;
        }
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    ZSTD_CCtx *cctx = thread_cctx();
    for (Py_ssize_t i = 0; i < count && cctx != NULL; i++) {
        char *dst = PyBytes_AS_STRING(frames[i]);
        size_t n = ZSTD_compressCCtx(cctx, dst, PyBytes_GET_SIZE(frames[i]), views[i].buf,
                                     views[i].len, level);
        sizes[i] = ZSTD_isError(n) ? (size_t)-1 : n;
        if (ZSTD_isError(n)) failed = 1;
        int small = !ZSTD_isError(n) && n < (size_t)views[i].len;
        crcs[i] = small ? crc32(0, (const Bytef *)dst, (uInt)n)
                        : crc32(0, views[i].buf, (uInt)views[i].len);
        if (!small) sizes[i] = 0;
    }
    if (cctx == NULL) failed = 2;
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_SetString(PyExc_RuntimeError, failed == 2 ? "no zstd context" : "zstd failed");
        goto done;
    }
    if ((result = PyList_New(count)) == NULL) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *frame = Py_None;
        if (sizes[i]) {
            if (_PyBytes_Resize(&frames[i], (Py_ssize_t)sizes[i]) < 0) {
                Py_CLEAR(result);
                goto done;
            }
            frame = frames[i];
        }
        PyObject *item = Py_BuildValue("(Ok)", frame, crcs[i]);
        if (item == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, item);
    }
done:
    if (frames)
        for (Py_ssize_t i = 0; i < count; i++) Py_XDECREF(frames[i]);
    if (views) release_all(views, held);
    PyMem_Free(views);
    PyMem_Free(frames);
    PyMem_Free(sizes);
    PyMem_Free(crcs);
    Py_DECREF(seq);
    return result;
}

enum { OK = 0, MISMATCH = 1, UNDECODABLE = 2 };

typedef struct {
    Py_buffer payload, view; /* view: the caller's out buffer, unless owned */
    PyObject *owned;         /* or a new bytes object of the plaintext length */
    char *out;
    size_t out_len;
    const uint8_t *id;
    int compressed, has_view, status;
    size_t zstd_error;
} DecodeItem;

static void decode_one(const uint8_t *key, ZSTD_DCtx *dctx, DecodeItem *it) {
    size_t want = it->out_len, got;
    if (it->compressed) {
        got = ZSTD_decompressDCtx(dctx, it->out, want, it->payload.buf, it->payload.len);
        if (ZSTD_isError(got)) {
            it->status = UNDECODABLE;
            it->zstd_error = got;
            return;
        }
    } else if ((got = (size_t)it->payload.len) == want) {
        memcpy(it->out, it->payload.buf, want);
    }
    uint8_t id[ID_LEN];
    if (got == want) hash_block(key, it->out, want, id);
    it->status = got == want && memcmp(id, it->id, ID_LEN) == 0 ? OK : MISMATCH;
}

/* Fill it from one (chunk_id, compressed, payload, out) tuple; -1 with an exception set
 * (what was taken is released by release_item). */
static int take_item(PyObject *tuple, DecodeItem *it) {
    PyObject *cid, *payload, *out;
    if (!PyArg_ParseTuple(tuple, "SpOO", &cid, &it->compressed, &payload, &out)) return -1;
    if (PyBytes_GET_SIZE(cid) != ID_LEN) {
        PyErr_SetString(PyExc_ValueError, "chunk ids are 32 bytes");
        return -1;
    }
    it->id = (const uint8_t *)PyBytes_AS_STRING(cid);
    if (PyLong_Check(out)) {
        Py_ssize_t n = PyLong_AsSsize_t(out);
        if (n < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "negative length");
            return -1;
        }
        if ((it->owned = PyBytes_FromStringAndSize(NULL, n)) == NULL) return -1;
        it->out = PyBytes_AS_STRING(it->owned);
        it->out_len = (size_t)n;
    } else {
        if (PyObject_GetBuffer(out, &it->view, PyBUF_WRITABLE) < 0) return -1;
        it->has_view = 1;
        it->out = it->view.buf;
        it->out_len = (size_t)it->view.len;
    }
    return PyObject_GetBuffer(payload, &it->payload, PyBUF_SIMPLE);
}

static void release_item(DecodeItem *it) {
    if (it->payload.obj != NULL) PyBuffer_Release(&it->payload);
    if (it->has_view) PyBuffer_Release(&it->view);
    Py_CLEAR(it->owned);
}

/* The result of a decoded item: None, its new bytes (a new reference) or why it failed. */
static PyObject *item_result(DecodeItem *it) {
    if (it->status == OK) return it->owned ? Py_NewRef(it->owned) : Py_NewRef(Py_None);
    if (it->status == MISMATCH) return PyUnicode_FromString("mismatch");
    return PyUnicode_FromFormat("undecodable: %s", ZSTD_getErrorName(it->zstd_error));
}

static PyObject *decode_many(PyObject *self, PyObject *args) {
    PyObject *items_obj, *key_obj, *seq, *result = NULL;
    const uint8_t *key;
    if (!PyArg_ParseTuple(args, "OO", &items_obj, &key_obj)) return NULL;
    if (parse_key(key_obj, &key) < 0) return NULL;
    if ((seq = PySequence_Fast(items_obj, "items must be a sequence")) == NULL) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq), held = 0;
    DecodeItem *items = PyMem_Calloc(count ? count : 1, sizeof(DecodeItem));
    if (items == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; held < count; held++)
        if (take_item(PySequence_Fast_GET_ITEM(seq, held), &items[held]) < 0) {
            held++; /* release what this item took */
            goto done;
        }
    int no_context = 0;
    Py_BEGIN_ALLOW_THREADS
    ZSTD_DCtx *dctx = thread_dctx();
    no_context = dctx == NULL;
    for (Py_ssize_t i = 0; i < count && dctx != NULL; i++) decode_one(key, dctx, &items[i]);
    Py_END_ALLOW_THREADS
    if (no_context) {
        PyErr_SetString(PyExc_RuntimeError, "no zstd context");
        goto done;
    }
    if ((result = PyList_New(count)) == NULL) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *status = item_result(&items[i]);
        if (status == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, status);
    }
done:
    for (Py_ssize_t i = 0; i < held; i++) release_item(&items[i]);
    PyMem_Free(items);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef methods[] = {
    {"chunk_ids", chunk_ids, METH_VARARGS, "chunk_ids(data, block_size, key) -> ids"},
    {"compress_many", compress_many, METH_VARARGS, "compress_many(blocks, level) -> frames"},
    {"decode_many", decode_many, METH_VARARGS, "decode_many(items, key) -> statuses"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_chunkcodec",
    "The chunk codec's per-block work in batches, one GIL release each (see chunkcodec.c).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__chunkcodec(void) {
    if (pthread_key_create(&cctx_key, free_cctx) != 0 ||
        pthread_key_create(&dctx_key, free_dctx) != 0)
        return PyErr_NoMemory();
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "BLAKE3_VERSION", BLAKE3_VERSION_STRING) < 0)
        Py_CLEAR(m);
    return m;
}
