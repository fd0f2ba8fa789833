/* topomirror.dataplane._fastpath: the per-packet loop in C, behind the same Engine interface.
 *
 * What CPython cannot do fast enough per packet (docs/BENCHMARKS.md, data plane): the receive
 * side of a node, where every datagram is parsed, checked against the de-duplication window,
 * opened (AES-256-GCM), measured and written to the TUN, and a relay's forwarding. The Python
 * modules stay the reference: `DedupWindow` and `PathMeter` here have the same interface and
 * behaviour as `topomirror.wire.dedup.PyDedupWindow` and `topomirror.feedback.measure.PyPathMeter`
 * (property tests run both side by side), and `FastRx.drain` hands every datagram it does not
 * handle itself (FEEDBACK, PROBE, CONTROL, a new epoch, an unknown sender) back to
 * `Engine.receive`, in order. On the send side, `FastTx.pump` reads the TUN and seals (`Sealer`,
 * which also keeps the session and path sequence counters) and sends the packets of the flows the
 * daemon registered, in UDP GSO runs per next hop, and under an adaptive policy the packets of
 * flows new to the daemon's table on their peer's standard path (handed up already sent, for the
 * flow table and the decision); every other packet goes back to the daemon. `PacketThread` calls
 * drain and pump from a thread of its own instead of the daemon's event loop.
 *
 * No policy lives here: what to mirror, when and where stays in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define HEADER_SIZE 24
#define TAG_SIZE 16
#define VERSION 1
#define KIND_DATA 1
#define KIND_CONTROL 4
#define SEQ_MASK ((1ULL << 56) - 1)
#define BASE_BUCKET_US 60000000LL
#define BASE_HISTORY 9 /* BASE_BUCKETS - 1 closed minutes */
#define VLEN 8
#define RX_BUFFER 65536
#define MAX_DEFERRED 1024
#define MAX_FORWARD 512

enum { NEW = 0, DUPLICATE = 1, REPLAY = 2, TOO_OLD = 3 };

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t be64(const uint8_t *p) { return ((uint64_t)be32(p) << 32) | be32(p + 4); }
static inline void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static inline void put32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = (uint8_t)v; }
static inline void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)(v >> 32)); put32(p + 4, (uint32_t)v); }

/* Signed difference of two u32 microsecond stamps (header.time_diff_us). */
static inline int64_t time_diff_us(uint32_t later, uint32_t earlier) { return (int32_t)(later - earlier); }

/* ------------------------------------------------------------------------------------------ */
/* DedupWindow                                                                                 */

typedef struct {
    PyObject_HEAD
    Py_ssize_t size;
    long long skew_us;
    uint8_t *masks;
    int has_highest;
    uint64_t highest;
    uint32_t highest_time;
} DedupWindow;

static int window_init(DedupWindow *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"size", "skew_us", NULL};
    Py_ssize_t size = 16384;
    long long skew = 250000;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|nL", kwlist, &size, &skew)) return -1;
    if (size <= 0 || (size & (size - 1))) {
        PyErr_SetString(PyExc_ValueError, "window size must be a positive power of two");
        return -1;
    }
    uint8_t *masks = PyMem_Calloc((size_t)size, 1);
    if (!masks) { PyErr_NoMemory(); return -1; }
    PyMem_Free(self->masks);
    self->masks = masks;
    self->size = size;
    self->skew_us = skew;
    self->has_highest = 0;
    self->highest = 0;
    self->highest_time = 0;
    return 0;
}

static void window_dealloc(DedupWindow *self) {
    PyMem_Free(self->masks);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static inline int window_check(DedupWindow *w, uint64_t seq, unsigned path_id, uint32_t send_time) {
    if (!w->has_highest || seq > w->highest) return NEW;
    if (w->highest - seq >= (uint64_t)w->size) return REPLAY;
    uint8_t mask = w->masks[seq & (uint64_t)(w->size - 1)];
    uint8_t bit = (uint8_t)(1u << (path_id < 7 ? path_id : 7));
    if (mask & bit) return REPLAY;
    if (mask) return DUPLICATE;
    if (time_diff_us(w->highest_time, send_time) > w->skew_us) return TOO_OLD;
    return NEW;
}

static inline void window_commit(DedupWindow *w, uint64_t seq, unsigned path_id, uint32_t send_time) {
    uint64_t size = (uint64_t)w->size, size_mask = size - 1;
    if (!w->has_highest || seq > w->highest) {
        if (!w->has_highest || seq - w->highest >= size) {
            memset(w->masks, 0, size);
        } else {
            uint64_t advance = seq - w->highest;
            uint64_t start = (w->highest + 1) & size_mask, end = start + advance;
            if (end <= size) {
                memset(w->masks + start, 0, advance);
            } else {
                memset(w->masks + start, 0, size - start);
                memset(w->masks, 0, end - size);
            }
        }
        w->has_highest = 1;
        w->highest = seq;
        w->highest_time = send_time;
    }
    w->masks[seq & size_mask] |= (uint8_t)(1u << (path_id < 7 ? path_id : 7));
}

static int parse_seq_args(PyObject *const *args, Py_ssize_t n, uint64_t *seq, unsigned *path, uint32_t *t) {
    if (n != 3) { PyErr_SetString(PyExc_TypeError, "expected (seq, path_id, send_time_us)"); return -1; }
    unsigned long long s = PyLong_AsUnsignedLongLong(args[0]);
    if (s == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    long p = PyLong_AsLong(args[1]);
    if (p == -1 && PyErr_Occurred()) return -1;
    unsigned long long tt = PyLong_AsUnsignedLongLongMask(args[2]);
    if (tt == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    if (p < 0) { PyErr_SetString(PyExc_ValueError, "path id must be >= 0"); return -1; }
    *seq = s; *path = (unsigned)p; *t = (uint32_t)tt;
    return 0;
}

static PyObject *verdicts[4]; /* the Verdict enum's members, once wire.dedup registered them */

static PyObject *window_check_py(DedupWindow *self, PyObject *const *args, Py_ssize_t n) {
    uint64_t seq; unsigned path; uint32_t t;
    if (parse_seq_args(args, n, &seq, &path, &t) < 0) return NULL;
    int verdict = window_check(self, seq, path, t);
    if (verdicts[verdict]) return Py_NewRef(verdicts[verdict]);
    return PyLong_FromLong(verdict);
}

static PyObject *set_verdicts(PyObject *module, PyObject *arg) {
    if (!PyTuple_Check(arg) || PyTuple_GET_SIZE(arg) != 4) {
        PyErr_SetString(PyExc_TypeError, "set_verdicts takes the 4 Verdict members (new, duplicate, replay, too old)");
        return NULL;
    }
    for (int i = 0; i < 4; i++) Py_XSETREF(verdicts[i], Py_NewRef(PyTuple_GET_ITEM(arg, i)));
    Py_RETURN_NONE;
}

static PyObject *window_commit_py(DedupWindow *self, PyObject *const *args, Py_ssize_t n) {
    uint64_t seq; unsigned path; uint32_t t;
    if (parse_seq_args(args, n, &seq, &path, &t) < 0) return NULL;
    window_commit(self, seq, path, t);
    Py_RETURN_NONE;
}

static PyObject *window_highest(DedupWindow *self, void *closure) {
    if (!self->has_highest) return PyLong_FromLong(-1);
    return PyLong_FromUnsignedLongLong(self->highest);
}

static PyMethodDef window_methods[] = {
    {"check", (PyCFunction)(void (*)(void))window_check_py, METH_FASTCALL,
     "check(seq, path_id, send_time_us) -> verdict (0 new, 1 duplicate, 2 replay, 3 too old); no side effects"},
    {"commit", (PyCFunction)(void (*)(void))window_commit_py, METH_FASTCALL,
     "commit(seq, path_id, send_time_us): record an authenticated arrival"},
    {NULL}};

static PyMemberDef window_members[] = {
    {"size", T_PYSSIZET, offsetof(DedupWindow, size), READONLY, NULL},
    {"skew_us", T_LONGLONG, offsetof(DedupWindow, skew_us), READONLY, NULL},
    {NULL}};

static PyGetSetDef window_getset[] = {{"highest", (getter)window_highest, NULL, NULL, NULL}, {NULL}};

static PyTypeObject DedupWindowType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "topomirror.dataplane._fastpath.DedupWindow",
    .tp_basicsize = sizeof(DedupWindow),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "De-duplication and replay window (C; same behaviour as topomirror.wire.dedup.PyDedupWindow).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)window_init,
    .tp_dealloc = (destructor)window_dealloc,
    .tp_methods = window_methods,
    .tp_members = window_members,
    .tp_getset = window_getset,
};

/* ------------------------------------------------------------------------------------------ */
/* PathMeter                                                                                   */

typedef struct {
    PyObject_HEAD
    int path_id;
    int started;
    long long base, bucket_min, bucket_end;
    long long history[BASE_HISTORY];
    int history_len, history_head;
    int has_last_transit;
    long long last_transit;
    double jitter_us;
    int has_highest;
    uint32_t highest, reported_highest;
    long long packets, bytes, wins, duplicates, reordered, late;
    long long owd_sum, owd_max;
    int has_owd_min;
    long long owd_min;
    long long total_packets, total_wins;
} PathMeter;

static void meter_reset(PathMeter *m) {
    m->packets = m->bytes = m->wins = m->duplicates = m->reordered = m->late = 0;
    m->owd_sum = 0;
    m->has_owd_min = 0;
    m->owd_min = 0;
    m->owd_max = 0;
}

static int meter_init(PathMeter *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"path_id", NULL};
    int path_id;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i", kwlist, &path_id)) return -1;
    self->path_id = path_id;
    self->started = 0;
    self->history_len = self->history_head = 0;
    self->has_last_transit = 0;
    self->jitter_us = 0.0;
    self->has_highest = 0;
    self->total_packets = self->total_wins = 0;
    meter_reset(self);
    return 0;
}

static inline void meter_record(PathMeter *m, long long arrival_us, uint32_t send_time, uint32_t path_seq,
                                long long size, int won) {
    long long transit = time_diff_us((uint32_t)arrival_us, send_time);
    if (!m->started) {
        m->started = 1;
        m->base = m->bucket_min = transit;
        m->bucket_end = arrival_us + BASE_BUCKET_US;
    } else if (arrival_us >= m->bucket_end) {
        /* A new minute: the oldest minute's minimum leaves the base. */
        if (m->history_len < BASE_HISTORY) {
            m->history[(m->history_head + m->history_len) % BASE_HISTORY] = m->bucket_min;
            m->history_len++;
        } else {
            m->history[m->history_head] = m->bucket_min;
            m->history_head = (m->history_head + 1) % BASE_HISTORY;
        }
        m->bucket_min = transit;
        m->bucket_end = arrival_us + BASE_BUCKET_US;
        long long base = transit;
        for (int i = 0; i < m->history_len; i++)
            if (m->history[i] < base) base = m->history[i];
        m->base = base;
    } else if (transit < m->bucket_min) {
        m->bucket_min = transit;
        if (transit < m->base) m->base = transit;
    }
    if (m->has_last_transit) {
        long long d = transit - m->last_transit;
        m->jitter_us += ((double)(d < 0 ? -d : d) - m->jitter_us) / 16;
    }
    m->has_last_transit = 1;
    m->last_transit = transit;
    long long owd = transit - m->base;
    m->owd_sum += owd;
    if (!m->has_owd_min || owd < m->owd_min) { m->owd_min = owd; m->has_owd_min = 1; }
    if (owd > m->owd_max) m->owd_max = owd;
    if (!m->has_highest) {
        m->has_highest = 1;
        m->highest = m->reported_highest = path_seq - 1;
    }
    uint32_t ahead = path_seq - m->highest;
    if (ahead > 0 && ahead < 0x80000000u) {
        m->highest = path_seq;
    } else {
        m->reordered++;
        uint32_t since = path_seq - m->reported_highest;
        if (!(since > 0 && since < 0x80000000u)) m->late++; /* from an interval already reported */
    }
    m->packets++;
    m->bytes += size;
    m->total_packets++;
    if (won) { m->wins++; m->total_wins++; } else m->duplicates++;
}

static PyObject *meter_record_py(PathMeter *self, PyObject *const *args, Py_ssize_t n) {
    if (n != 5) { PyErr_SetString(PyExc_TypeError, "record(arrival_us, send_time_us, path_seq, size, won)"); return NULL; }
    long long arrival = PyLong_AsLongLong(args[0]);
    if (arrival == -1 && PyErr_Occurred()) return NULL;
    unsigned long long send = PyLong_AsUnsignedLongLongMask(args[1]);
    if (send == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    unsigned long long pseq = PyLong_AsUnsignedLongLongMask(args[2]);
    if (pseq == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    long long size = PyLong_AsLongLong(args[3]);
    if (size == -1 && PyErr_Occurred()) return NULL;
    int won = PyObject_IsTrue(args[4]);
    if (won < 0) return NULL;
    meter_record(self, arrival, (uint32_t)send, (uint32_t)pseq, size, won);
    Py_RETURN_NONE;
}

/* Close the interval: None if nothing arrived, else the PathReport fields as a tuple
 * (packets, bytes, lost, reordered, wins, duplicates, owd_min_us, owd_avg_us, owd_max_us, jitter_us). */
static PyObject *meter_take(PathMeter *self, PyObject *unused) {
    if (self->packets == 0) Py_RETURN_NONE;
    long long expected = (uint32_t)(self->highest - self->reported_highest);
    long long lost = expected - (self->packets - self->late);
    if (lost < 0) lost = 0;
    long long avg = self->owd_sum / self->packets;
    if ((self->owd_sum % self->packets != 0) && ((self->owd_sum < 0) != (self->packets < 0))) avg -= 1;
    PyObject *out = Py_BuildValue("(LLLLLLLLLL)", self->packets, self->bytes, lost, self->reordered, self->wins,
                                  self->duplicates, self->has_owd_min ? self->owd_min : 0LL, avg, self->owd_max,
                                  (long long)self->jitter_us);
    if (!out) return NULL;
    self->reported_highest = self->highest;
    meter_reset(self);
    return out;
}

static PyObject *meter_owd_now(PathMeter *self, void *closure) {
    if (!self->has_last_transit || !self->started) return PyLong_FromLong(0);
    return PyLong_FromLongLong(self->last_transit - self->base);
}

static PyMethodDef meter_methods[] = {
    {"record", (PyCFunction)(void (*)(void))meter_record_py, METH_FASTCALL,
     "record(arrival_us, send_time_us, path_seq, size, won)"},
    {"_take", (PyCFunction)meter_take, METH_NOARGS, "close the interval: a tuple of its figures, or None"},
    {NULL}};

static PyMemberDef meter_members[] = {
    {"path_id", T_INT, offsetof(PathMeter, path_id), READONLY, NULL},
    {"jitter_us", T_DOUBLE, offsetof(PathMeter, jitter_us), READONLY, NULL},
    {"packets", T_LONGLONG, offsetof(PathMeter, packets), READONLY, NULL},
    {"bytes", T_LONGLONG, offsetof(PathMeter, bytes), READONLY, NULL},
    {"wins", T_LONGLONG, offsetof(PathMeter, wins), READONLY, NULL},
    {"duplicates", T_LONGLONG, offsetof(PathMeter, duplicates), READONLY, NULL},
    {"reordered", T_LONGLONG, offsetof(PathMeter, reordered), READONLY, NULL},
    {"total_packets", T_LONGLONG, offsetof(PathMeter, total_packets), READONLY, NULL},
    {"total_wins", T_LONGLONG, offsetof(PathMeter, total_wins), READONLY, NULL},
    {NULL}};

static PyGetSetDef meter_getset[] = {{"owd_now_us", (getter)meter_owd_now, NULL, NULL, NULL}, {NULL}};

static PyTypeObject PathMeterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "topomirror.dataplane._fastpath.PathMeter",
    .tp_basicsize = sizeof(PathMeter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Per-path measurement core (C; same behaviour as topomirror.feedback.measure.PyPathMeter).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)meter_init,
    .tp_methods = meter_methods,
    .tp_members = meter_members,
    .tp_getset = meter_getset,
};

/* ------------------------------------------------------------------------------------------ */
/* AES-256-GCM                                                                                 */

static EVP_CIPHER_CTX *gcm_new(const uint8_t *key, int encrypt) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx) return NULL;
    int ok = encrypt ? EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL)
                     : EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL);
    ok = ok && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, 12, NULL);
    ok = ok && (encrypt ? EVP_EncryptInit_ex(ctx, NULL, NULL, key, NULL) : EVP_DecryptInit_ex(ctx, NULL, NULL, key, NULL));
    if (!ok) { EVP_CIPHER_CTX_free(ctx); return NULL; }
    return ctx;
}

static inline void make_nonce(uint8_t nonce[12], uint16_t sender, uint16_t epoch, unsigned path_id, uint64_t seq) {
    put16(nonce, sender);
    put16(nonce + 2, epoch);
    put64(nonce + 4, ((uint64_t)(path_id & 0xFF) << 56) | (seq & SEQ_MASK));
}

/* Open datagram[HEADER_SIZE:len] into out; returns the payload length or -1 if the tag fails. */
static int gcm_open(EVP_CIPHER_CTX *ctx, const uint8_t nonce[12], const uint8_t *datagram, int len, uint8_t *out) {
    int n = 0, m = 0, body = len - HEADER_SIZE - TAG_SIZE;
    if (body < 0) return -1;
    if (!EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce)) return -1;
    if (!EVP_DecryptUpdate(ctx, NULL, &n, datagram, HEADER_SIZE)) return -1;
    if (body && !EVP_DecryptUpdate(ctx, out, &n, datagram + HEADER_SIZE, body)) return -1;
    if (!EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_SIZE, (void *)(datagram + len - TAG_SIZE))) return -1;
    if (EVP_DecryptFinal_ex(ctx, out + (body ? n : 0), &m) <= 0) return -1;
    return body;
}

/* ------------------------------------------------------------------------------------------ */
/* Sealer: the send side of one (peer, epoch)                                                   */

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *ctx;
    uint16_t sender, epoch;
    unsigned long long seq;    /* the session sequence of the last packet sent to this peer */
    uint32_t path_seq[256];    /* per path: the last path sequence sent */
} Sealer;

static int sealer_init(Sealer *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"key", "sender", "epoch", NULL};
    Py_buffer key;
    int sender, epoch;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*ii", kwlist, &key, &sender, &epoch)) return -1;
    if (key.len != 32) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "an AES-256-GCM key is 32 bytes");
        return -1;
    }
    if (self->ctx) EVP_CIPHER_CTX_free(self->ctx);
    self->ctx = gcm_new(key.buf, 1);
    PyBuffer_Release(&key);
    if (!self->ctx) { PyErr_SetString(PyExc_RuntimeError, "OpenSSL: cannot set up AES-256-GCM"); return -1; }
    self->sender = (uint16_t)sender;
    self->epoch = (uint16_t)epoch;
    self->seq = 0;
    memset(self->path_seq, 0, sizeof(self->path_seq));
    return 0;
}

static PyObject *sealer_next_seq(Sealer *self, PyObject *unused) { return PyLong_FromUnsignedLongLong(++self->seq); }

static PyObject *sealer_next_path_seq(Sealer *self, PyObject *arg) {
    long path_id = PyLong_AsLong(arg);
    if (path_id == -1 && PyErr_Occurred()) return NULL;
    if (path_id < 0 || path_id > 255) { PyErr_SetString(PyExc_ValueError, "path id is a u8"); return NULL; }
    return PyLong_FromUnsignedLong(++self->path_seq[path_id]);
}

/* Seal one DATA copy into out (HEADER + payload + TAG bytes); 0 on success. */
static int seal_into(Sealer *self, uint8_t *p, int kind, unsigned path_id, uint16_t channel, uint64_t seq,
                     uint32_t path_seq, uint32_t send_time, const uint8_t *payload, int len) {
    p[0] = (uint8_t)((VERSION << 4) | (kind & 0x0F));
    p[1] = (uint8_t)path_id;
    put16(p + 2, channel);
    put16(p + 4, self->sender);
    put16(p + 6, self->epoch);
    put64(p + 8, seq);
    put32(p + 16, path_seq);
    put32(p + 20, send_time);
    uint8_t nonce[12];
    make_nonce(nonce, self->sender, self->epoch, path_id, seq);
    int n = 0, ok;
    ok = EVP_EncryptInit_ex(self->ctx, NULL, NULL, NULL, nonce);
    ok = ok && EVP_EncryptUpdate(self->ctx, NULL, &n, p, HEADER_SIZE);
    if (ok && len) ok = EVP_EncryptUpdate(self->ctx, p + HEADER_SIZE, &n, payload, len);
    ok = ok && EVP_EncryptFinal_ex(self->ctx, p + HEADER_SIZE + len, &n);
    ok = ok && EVP_CIPHER_CTX_ctrl(self->ctx, EVP_CTRL_GCM_GET_TAG, TAG_SIZE, p + HEADER_SIZE + len);
    return ok ? 0 : -1;
}

static void sealer_dealloc(Sealer *self) {
    if (self->ctx) EVP_CIPHER_CTX_free(self->ctx);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* seal(kind, path_id, channel, seq, path_seq, send_time_us, payload) -> header + ciphertext + tag */
static PyObject *sealer_seal(Sealer *self, PyObject *const *args, Py_ssize_t n) {
    if (n != 7) { PyErr_SetString(PyExc_TypeError, "seal(kind, path_id, channel, seq, path_seq, send_time_us, payload)"); return NULL; }
    long kind = PyLong_AsLong(args[0]);
    long path_id = PyLong_AsLong(args[1]);
    long channel = PyLong_AsLong(args[2]);
    unsigned long long seq = PyLong_AsUnsignedLongLongMask(args[3]);
    unsigned long long path_seq = PyLong_AsUnsignedLongLongMask(args[4]);
    unsigned long long send_time = PyLong_AsUnsignedLongLongMask(args[5]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer payload;
    if (PyObject_GetBuffer(args[6], &payload, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + payload.len + TAG_SIZE);
    if (!out) { PyBuffer_Release(&payload); return NULL; }
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    int failed = seal_into(self, p, (int)kind, (unsigned)path_id, (uint16_t)channel, seq, (uint32_t)path_seq,
                           (uint32_t)send_time, payload.buf, (int)payload.len);
    PyBuffer_Release(&payload);
    if (failed) { Py_DECREF(out); PyErr_SetString(PyExc_RuntimeError, "OpenSSL: AES-256-GCM seal failed"); return NULL; }
    return out;
}

static PyMethodDef sealer_methods[] = {
    {"seal", (PyCFunction)(void (*)(void))sealer_seal, METH_FASTCALL,
     "seal(kind, path_id, channel, seq, path_seq, send_time_us, payload) -> datagram"},
    {"next_seq", (PyCFunction)sealer_next_seq, METH_NOARGS, "the next session sequence number"},
    {"next_path_seq", (PyCFunction)sealer_next_path_seq, METH_O, "next_path_seq(path_id): the next path sequence"},
    {NULL}};

static PyMemberDef sealer_members[] = {
    {"seq", T_ULONGLONG, offsetof(Sealer, seq), READONLY, "the session sequence of the last packet sent"},
    {NULL}};

static PyTypeObject SealerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "topomirror.dataplane._fastpath.Sealer",
    .tp_basicsize = sizeof(Sealer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Sealer(key, sender, epoch): builds v1 datagrams with AES-256-GCM under a derived traffic key.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)sealer_init,
    .tp_dealloc = (destructor)sealer_dealloc,
    .tp_methods = sealer_methods,
    .tp_members = sealer_members,
};

/* ------------------------------------------------------------------------------------------ */
/* Sending bursts                                                                              */

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define GSO_MAX_SEGMENTS 64
#define GSO_MAX_BYTES 65000

static inline int same_address(const struct sockaddr_in *a, const struct sockaddr_in *b) {
    return a->sin_addr.s_addr == b->sin_addr.s_addr && a->sin_port == b->sin_port;
}

typedef struct {
    struct mmsghdr msgs[MAX_FORWARD];
    char control[MAX_FORWARD][CMSG_SPACE(sizeof(uint16_t))];
    int gso; /* runs leave as UDP GSO super-datagrams until the kernel refuses */
} Sender;

/* Send n datagrams (iov[i] to addr[i]): consecutive datagrams to one address, all of one size but
 * the last, leave as one UDP GSO send (across veth to a GRO socket they stay one packet). */
static int send_runs(Sender *sd, int fd, struct iovec *iov, struct sockaddr_in *addr, int n,
                     unsigned long long *no_route, unsigned long long *errors) {
    int ngroups = 0, k = 0;
    while (k < n) {
        int start = k, seg = (int)iov[k].iov_len, total = seg;
        k++;
        if (sd->gso) {
            while (k < n && k - start < GSO_MAX_SEGMENTS && same_address(&addr[k], &addr[start])
                   && (int)iov[k].iov_len <= seg && total + (int)iov[k].iov_len <= GSO_MAX_BYTES) {
                total += (int)iov[k].iov_len;
                k++;
                if ((int)iov[k - 1].iov_len < seg) break; /* a shorter one ends the run */
            }
        }
        struct msghdr *h = &sd->msgs[ngroups].msg_hdr;
        memset(&sd->msgs[ngroups], 0, sizeof(sd->msgs[ngroups]));
        h->msg_name = &addr[start];
        h->msg_namelen = sizeof(struct sockaddr_in);
        h->msg_iov = &iov[start];
        h->msg_iovlen = (size_t)(k - start);
        if (k - start > 1) {
            h->msg_control = sd->control[ngroups];
            h->msg_controllen = sizeof(sd->control[ngroups]);
            struct cmsghdr *c = CMSG_FIRSTHDR(h);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t size = (uint16_t)seg;
            memcpy(CMSG_DATA(c), &size, sizeof(size));
        }
        ngroups++;
    }
    int start = 0;
    while (start < ngroups) {
        int sent = sendmmsg(fd, sd->msgs + start, (unsigned)(ngroups - start), MSG_DONTWAIT);
        if (sent < 0) {
            int code = errno;
            struct msghdr *h = &sd->msgs[start].msg_hdr;
            if (sd->gso && h->msg_iovlen > 1 &&
                (code == EIO || code == EINVAL || code == EOPNOTSUPP || code == ENOPROTOOPT)) {
                /* No segmentation offload here: from now on one datagram per message. */
                sd->gso = 0;
                for (size_t i = 0; i < h->msg_iovlen; i++) {
                    struct msghdr one = {0};
                    one.msg_name = h->msg_name;
                    one.msg_namelen = h->msg_namelen;
                    one.msg_iov = &h->msg_iov[i];
                    one.msg_iovlen = 1;
                    if (sendmsg(fd, &one, MSG_DONTWAIT) < 0) (*errors)++;
                }
            } else if (code == ENETUNREACH || code == EHOSTUNREACH) {
                *no_route += h->msg_iovlen;
            } else {
                *errors += h->msg_iovlen;
            }
            start++; /* drop the one that failed, go on with the rest */
        } else {
            start += sent;
        }
    }
    return ngroups; /* messages: each one trip through the kernel's stack */
}

/* (host, port) as Python gives them -> sockaddr_in; -1 with a ValueError if not IPv4. */
static int address_from(PyObject *host, PyObject *port, struct sockaddr_in *addr) {
    const char *text = PyUnicode_AsUTF8(host);
    long p = PyLong_AsLong(port);
    if (!text || (p == -1 && PyErr_Occurred())) return -1;
    memset(addr, 0, sizeof(*addr));
    addr->sin_family = AF_INET;
    addr->sin_port = htons((uint16_t)p);
    if (p < 0 || p > 65535 || inet_pton(AF_INET, text, &addr->sin_addr) != 1) {
        PyErr_Format(PyExc_ValueError, "not an IPv4 address and port: %s:%ld", text, p);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* FastRx: a node's receive loop                                                               */

typedef struct {
    uint16_t epoch;
    EVP_CIPHER_CTX *ctx;
    DedupWindow *window;
    PyObject *builder;          /* FeedbackBuilder: .meter(path_id) creates a meter */
    PathMeter *meters[256];     /* borrowed from the builder's dict, held here with a reference */
} RxPeer;

enum {
    C_RX, C_DELIVERED, C_FORWARDED, C_DUPLICATE, C_REPLAY, C_TOO_OLD, C_AUTH, C_MALFORMED,
    C_RECV_CALLS, C_DATAGRAMS, C_FORWARD_ERRORS, C_NO_ROUTE, C_COUNT
};

typedef struct {
    const uint8_t *data;
    int len;
    long long arrival_us;
} Pending;

typedef struct {
    PyObject_HEAD
    RxPeer *peers[65536];
    PyObject *vcs; /* the Engine's relay table: (sender, channel) -> [address, expiry, packets] */
    uint8_t *buffers;
    uint8_t *plain;
    Pending deferred[MAX_DEFERRED];
    struct iovec fwd_iov[MAX_FORWARD];
    struct sockaddr_in fwd_addr[MAX_FORWARD];
    int nfwd;
    Sender sender;
} FastRx;

static void rxpeer_free(RxPeer *p) {
    if (!p) return;
    if (p->ctx) EVP_CIPHER_CTX_free(p->ctx);
    Py_XDECREF(p->window);
    Py_XDECREF(p->builder);
    for (int i = 0; i < 256; i++) Py_XDECREF(p->meters[i]);
    PyMem_Free(p);
}

static int fastrx_init(FastRx *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"vcs", NULL};
    PyObject *vcs;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!", kwlist, &PyDict_Type, &vcs)) return -1;
    Py_INCREF(vcs);
    Py_XSETREF(self->vcs, vcs);
    if (!self->buffers) self->buffers = PyMem_Malloc((size_t)VLEN * RX_BUFFER);
    if (!self->plain) self->plain = PyMem_Malloc(RX_BUFFER);
    if (!self->buffers || !self->plain) { PyErr_NoMemory(); return -1; }
    self->sender.gso = 1;
    return 0;
}

static void fastrx_dealloc(FastRx *self) {
    for (int i = 0; i < 65536; i++) rxpeer_free(self->peers[i]);
    Py_XDECREF(self->vcs);
    PyMem_Free(self->buffers);
    PyMem_Free(self->plain);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* set_peer(sender, epoch, key, window, builder): DATA from `sender` in `epoch` is handled here. */
static PyObject *fastrx_set_peer(FastRx *self, PyObject *args) {
    int sender, epoch;
    Py_buffer key;
    PyObject *window, *builder;
    if (!PyArg_ParseTuple(args, "iiy*O!O", &sender, &epoch, &key, &DedupWindowType, &window, &builder)) return NULL;
    if (sender < 0 || sender > 65535 || key.len != 32) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "sender is a u16 and the key 32 bytes");
        return NULL;
    }
    RxPeer *p = PyMem_Calloc(1, sizeof(RxPeer));
    if (!p) { PyBuffer_Release(&key); return PyErr_NoMemory(); }
    p->ctx = gcm_new(key.buf, 0);
    PyBuffer_Release(&key);
    if (!p->ctx) { PyMem_Free(p); PyErr_SetString(PyExc_RuntimeError, "OpenSSL: cannot set up AES-256-GCM"); return NULL; }
    p->epoch = (uint16_t)epoch;
    Py_INCREF(window);
    p->window = (DedupWindow *)window;
    Py_INCREF(builder);
    p->builder = builder;
    rxpeer_free(self->peers[sender]);
    self->peers[sender] = p;
    Py_RETURN_NONE;
}

static PyObject *fastrx_clear_peer(FastRx *self, PyObject *arg) {
    long sender = PyLong_AsLong(arg);
    if (sender == -1 && PyErr_Occurred()) return NULL;
    if (sender >= 0 && sender <= 65535) {
        rxpeer_free(self->peers[sender]);
        self->peers[sender] = NULL;
    }
    Py_RETURN_NONE;
}

static PathMeter *rx_meter(RxPeer *p, unsigned path_id) {
    PathMeter *m = p->meters[path_id];
    if (m) return m;
    PyObject *obj = PyObject_CallMethod(p->builder, "meter", "I", path_id);
    if (!obj) return NULL;
    if (!PyObject_TypeCheck(obj, &PathMeterType)) {
        Py_DECREF(obj);
        PyErr_SetString(PyExc_TypeError, "FeedbackBuilder.meter must return a C PathMeter");
        return NULL;
    }
    p->meters[path_id] = (PathMeter *)obj; /* keeps the new reference */
    return (PathMeter *)obj;
}

/* Look up the relay table; 1 and the next hop in *addr if the datagram is to be forwarded. */
static int rx_vc(FastRx *self, uint16_t sender, uint16_t channel, double now, struct sockaddr_in *addr) {
    PyObject *key = Py_BuildValue("(HH)", sender, channel);
    if (!key) { PyErr_Clear(); return 0; }
    PyObject *entry = PyDict_GetItemWithError(self->vcs, key);
    Py_DECREF(key);
    if (!entry) { PyErr_Clear(); return 0; }
    if (!PyList_Check(entry) || PyList_GET_SIZE(entry) < 3) return 0;
    double expiry = PyFloat_AsDouble(PyList_GET_ITEM(entry, 1));
    if (expiry == -1.0 && PyErr_Occurred()) { PyErr_Clear(); return 0; }
    if (!(expiry > now)) return 0;
    PyObject *address = PyList_GET_ITEM(entry, 0);
    if (!PyTuple_Check(address) || PyTuple_GET_SIZE(address) != 2) return 0;
    if (address_from(PyTuple_GET_ITEM(address, 0), PyTuple_GET_ITEM(address, 1), addr) < 0) {
        PyErr_Clear();
        return 0;
    }
    long long packets = PyLong_AsLongLong(PyList_GET_ITEM(entry, 2));
    PyObject *count = packets == -1 && PyErr_Occurred() ? NULL : PyLong_FromLongLong(packets + 1);
    if (count) PyList_SetItem(entry, 2, count); else PyErr_Clear();
    return 1;
}

/* One DATA datagram for a registered peer and epoch. Returns 0 if done, 1 to defer (an expected
 * second copy while first copies wait), -1 on a Python error. */
static int rx_data(FastRx *self, RxPeer *p, const uint8_t *d, int len, long long arrival_us, int tun_fd,
                   int may_defer, unsigned long long *counts) {
    unsigned path_id = d[1];
    uint64_t seq = be64(d + 8);
    uint32_t path_seq = be32(d + 16), send_time = be32(d + 20);
    int verdict = window_check(p->window, seq, path_id, send_time);
    if (verdict == REPLAY) { counts[C_RX]++; counts[C_REPLAY]++; return 0; }
    if (verdict == TOO_OLD) { counts[C_RX]++; counts[C_TOO_OLD]++; return 0; }
    if (verdict == DUPLICATE && may_defer) return 1;
    counts[C_RX]++;
    uint8_t nonce[12];
    make_nonce(nonce, be16(d + 4), p->epoch, path_id, seq);
    int plen = gcm_open(p->ctx, nonce, d, len, self->plain);
    if (plen < 0) { counts[C_AUTH]++; return 0; }
    window_commit(p->window, seq, path_id, send_time);
    PathMeter *m = rx_meter(p, path_id);
    if (!m) return -1;
    meter_record(m, arrival_us, send_time, path_seq, plen, verdict == NEW);
    if (verdict == DUPLICATE) { counts[C_DUPLICATE]++; return 0; }
    counts[C_DELIVERED]++;
    if (tun_fd >= 0 && write(tun_fd, self->plain, (size_t)plen) < 0) counts[C_MALFORMED]++;
    return 0;
}

static PyObject *counts_tuple(const unsigned long long *counts, int n) {
    PyObject *t = PyTuple_New(n);
    if (!t) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(counts[i]);
        if (!v) { Py_DECREF(t); return NULL; }
        PyTuple_SET_ITEM(t, i, v);
    }
    return t;
}

/* drain(sock_fd, tun_fd, now, offset_ns, max_calls) -> (slow, counts)
 *
 * Receives until the socket is empty or max_calls recvmmsg calls were made. DATA from a
 * registered peer and epoch is opened, de-duplicated, measured and written to tun_fd here;
 * datagrams on a live virtual connection are forwarded here. Everything else comes back in
 * `slow` as (datagram, arrival_us) for Engine.receive, in arrival order. */
/* The body of drain: appends what needs Python to `slow`, adds to `counts`; 0, or -1 with a
 * Python error. `*hold` set: a CONTROL went up and Python has not handled it yet, so a datagram on
 * a channel we cannot forward follows it up (the CONTROL may install that very channel); the
 * loop sets it when it hands a CONTROL up. Called with the GIL held. */
static int drain_into(FastRx *self, int sock_fd, int tun_fd, double now, long long offset_ns, int max_calls,
                      PyObject *slow, int *hold, unsigned long long *counts) {
    struct mmsghdr msgs[VLEN];
    struct iovec iov[VLEN];
    char control[VLEN][128];
    self->nfwd = 0;
    for (int call = 0; call < max_calls; call++) {
        memset(msgs, 0, sizeof(msgs));
        for (int i = 0; i < VLEN; i++) {
            iov[i].iov_base = self->buffers + (size_t)i * RX_BUFFER;
            iov[i].iov_len = RX_BUFFER;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = control[i];
            msgs[i].msg_hdr.msg_controllen = sizeof(control[i]);
        }
        int got = recvmmsg(sock_fd, msgs, VLEN, MSG_DONTWAIT, NULL);
        if (got <= 0) break;
        counts[C_RECV_CALLS]++;
        int ndeferred = 0;
        for (int i = 0; i < got; i++) {
            int total = (int)msgs[i].msg_len, segment = 0;
            long long arrival_us = -1;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c; c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)) {
                if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
                    int value = 0;
                    memcpy(&value, CMSG_DATA(c), c->cmsg_len - CMSG_LEN(0) < sizeof(int) ? c->cmsg_len - CMSG_LEN(0) : sizeof(int));
                    segment = value & 0xFFFF;
                } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPNS) {
                    struct timespec ts;
                    memcpy(&ts, CMSG_DATA(c), sizeof(ts));
                    /* The kernel's stamp as is (CLOCK_REALTIME), moved to the monotonic clock. */
                    arrival_us = ((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec + offset_ns) / 1000;
                }
            }
            if (arrival_us < 0) {
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                arrival_us = ((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec) / 1000;
            }
            if (segment <= 0 || segment >= total) segment = total;
            const uint8_t *base = self->buffers + (size_t)i * RX_BUFFER;
            for (int off = 0; off < total; off += segment) {
                const uint8_t *d = base + off;
                int len = total - off < segment ? total - off : segment;
                counts[C_DATAGRAMS]++;
                if (len < HEADER_SIZE + TAG_SIZE || d[0] >> 4 != VERSION) {
                    counts[C_RX]++;
                    counts[C_MALFORMED]++;
                    continue;
                }
                uint16_t channel = be16(d + 2), sender = be16(d + 4);
                if (channel && self->nfwd < MAX_FORWARD &&
                    rx_vc(self, sender, channel, now, &self->fwd_addr[self->nfwd])) {
                    int k = self->nfwd++;
                    self->fwd_iov[k].iov_base = (void *)d;
                    self->fwd_iov[k].iov_len = (size_t)len;
                    counts[C_RX]++;
                    counts[C_FORWARDED]++;
                    continue;
                }
                RxPeer *p = self->peers[sender];
                /* Once something went up to Python (a CONTROL that may install this very virtual
                 * connection), a datagram on a channel we cannot forward follows it up, in order. */
                if ((channel && *hold) || (d[0] & 0x0F) != KIND_DATA || !p || p->epoch != be16(d + 6)) {
                    PyObject *item = Py_BuildValue("(y#L)", (const char *)d, (Py_ssize_t)len, arrival_us);
                    if (!item || PyList_Append(slow, item) < 0) { Py_XDECREF(item); return -1; }
                    Py_DECREF(item);
                    if ((d[0] & 0x0F) == KIND_CONTROL) *hold = 1;
                    continue;
                }
                int r = rx_data(self, p, d, len, arrival_us, tun_fd, ndeferred < MAX_DEFERRED, counts);
                if (r < 0) return -1;
                if (r == 1) {
                    self->deferred[ndeferred].data = d;
                    self->deferred[ndeferred].len = len;
                    self->deferred[ndeferred].arrival_us = arrival_us;
                    ndeferred++;
                }
            }
        }
        /* Second copies: authenticated and measured once this burst's first copies are out. */
        for (int k = 0; k < ndeferred; k++) {
            const uint8_t *d = self->deferred[k].data;
            RxPeer *p = self->peers[be16(d + 4)];
            if (!p || p->epoch != be16(d + 6)) continue;
            if (rx_data(self, p, d, self->deferred[k].len, self->deferred[k].arrival_us, tun_fd, 0, counts) < 0)
                return -1;
        }
        if (self->nfwd) {
            (void)send_runs(&self->sender, sock_fd, self->fwd_iov, self->fwd_addr, self->nfwd, &counts[C_NO_ROUTE],
                            &counts[C_FORWARD_ERRORS]);
            self->nfwd = 0;
        }
        if (got < VLEN) break;
    }
    return 0;
}

static PyObject *fastrx_drain(FastRx *self, PyObject *args) {
    int sock_fd, tun_fd, max_calls;
    double now;
    long long offset_ns;
    if (!PyArg_ParseTuple(args, "iidLi", &sock_fd, &tun_fd, &now, &offset_ns, &max_calls)) return NULL;
    unsigned long long counts[C_COUNT] = {0};
    PyObject *slow = PyList_New(0);
    if (!slow) return NULL;
    int hold = 0; /* within one call: a CONTROL handed up holds the channels behind it */
    if (drain_into(self, sock_fd, tun_fd, now, offset_ns, max_calls, slow, &hold, counts) < 0) {
        Py_DECREF(slow);
        return NULL;
    }
    PyObject *ct = counts_tuple(counts, C_COUNT);
    if (!ct) { Py_DECREF(slow); return NULL; }
    PyObject *out = PyTuple_Pack(2, slow, ct);
    Py_DECREF(slow);
    Py_DECREF(ct);
    return out;
}

static PyMethodDef fastrx_methods[] = {
    {"set_peer", (PyCFunction)fastrx_set_peer, METH_VARARGS,
     "set_peer(sender, epoch, key, window, builder): DATA from sender in epoch is handled natively"},
    {"clear_peer", (PyCFunction)fastrx_clear_peer, METH_O, "clear_peer(sender)"},
    {"drain", (PyCFunction)fastrx_drain, METH_VARARGS,
     "drain(sock_fd, tun_fd, now, offset_ns, max_calls) -> (slow datagrams, counts)"},
    {NULL}};

static PyTypeObject FastRxType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "topomirror.dataplane._fastpath.FastRx",
    .tp_basicsize = sizeof(FastRx),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FastRx(vcs): a node's native receive loop (see module doc).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)fastrx_init,
    .tp_dealloc = (destructor)fastrx_dealloc,
    .tp_methods = fastrx_methods,
};

/* ------------------------------------------------------------------------------------------ */

/* ------------------------------------------------------------------------------------------ */
/* FastTx: a node's send loop for the flows the daemon handed down                            */

typedef struct {
    struct sockaddr_in addr;
    unsigned path_id;
    uint16_t channel;
} TxRoute;

#define MAX_ROUTES 4

typedef struct {
    PyObject_HEAD
    PyObject *entry;  /* the daemon's FlowEntry */
    PyObject *routes; /* its PathRoute objects, for the daemon's accounting */
    Sealer *sealer;
    int nroutes;
    TxRoute route[MAX_ROUTES];
    long long packets, bytes; /* since the last take */
    int touched;
} FastFlow;

static PyTypeObject FastFlowType;

/* FastFlow(entry, routes, sealer, specs): specs is one (host, port, path_id, channel) per route. */
static int fastflow_init(FastFlow *self, PyObject *args, PyObject *kwds) {
    PyObject *entry, *routes, *sealer, *specs;
    if (!PyArg_ParseTuple(args, "OOO!O!", &entry, &routes, &SealerType, &sealer, &PyTuple_Type, &specs)) return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(specs);
    if (n < 1 || n > MAX_ROUTES) { PyErr_SetString(PyExc_ValueError, "a fast flow has 1 to 4 routes"); return -1; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *spec = PyTuple_GET_ITEM(specs, i);
        PyObject *host, *port;
        int path_id, channel;
        if (!PyArg_ParseTuple(spec, "OOii", &host, &port, &path_id, &channel)) return -1;
        if (address_from(host, port, &self->route[i].addr) < 0) return -1;
        self->route[i].path_id = (unsigned)path_id & 0xFF;
        self->route[i].channel = (uint16_t)channel;
    }
    self->nroutes = (int)n;
    Py_INCREF(entry); Py_XSETREF(self->entry, entry);
    Py_INCREF(routes); Py_XSETREF(self->routes, routes);
    Py_INCREF(sealer); Py_XSETREF(self->sealer, (Sealer *)sealer);
    self->packets = self->bytes = 0;
    self->touched = 0;
    return 0;
}

static void fastflow_dealloc(FastFlow *self) {
    Py_XDECREF(self->entry);
    Py_XDECREF(self->routes);
    Py_XDECREF(self->sealer);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *fastflow_take(FastFlow *self, PyObject *unused) {
    PyObject *out = Py_BuildValue("(LL)", self->packets, self->bytes);
    self->packets = self->bytes = 0;
    self->touched = 0;
    return out;
}

static PyMethodDef fastflow_methods[] = {
    {"take", (PyCFunction)fastflow_take, METH_NOARGS, "(packets, bytes) sent since the last take"},
    {NULL}};

static PyMemberDef fastflow_members[] = {
    {"entry", T_OBJECT, offsetof(FastFlow, entry), READONLY, NULL},
    {"routes", T_OBJECT, offsetof(FastFlow, routes), READONLY, NULL},
    {NULL}};

static PyTypeObject FastFlowType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "topomirror.dataplane._fastpath.FastFlow",
    .tp_basicsize = sizeof(FastFlow),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FastFlow(entry, routes, sealer, specs): a flow FastTx.pump seals and sends without Python.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)fastflow_init,
    .tp_dealloc = (destructor)fastflow_dealloc,
    .tp_methods = fastflow_methods,
    .tp_members = fastflow_members,
};

#define LANES 4
#define LANE_SIZE 512
#define ARENA (1 << 20)

#define MAX_PREFIXES 256

/* Where a new flow's first packets go before Python decided anything: a peer's overlay prefix
 * and its standard path (what the daemon does for every new flow under an adaptive policy). */
typedef struct {
    uint32_t network, mask; /* host byte order */
    Sealer *sealer;
    TxRoute route;
} TxPrefix;

typedef struct {
    PyObject_HEAD
    PyObject *flows; /* dict: flow bytes (dataplane.packet.flow_bytes) -> FastFlow */
    PyObject *known; /* the daemon's flow table (flow bytes -> entry), or NULL: new flows go up */
    int nprefixes;
    TxPrefix prefixes[MAX_PREFIXES]; /* longest prefix first */
    uint8_t *arena, *packet;
    int used;
    int nlanes;
    struct sockaddr_in lane_addr[LANES];
    int lane_n[LANES];
    struct iovec lane_iov[LANES][LANE_SIZE];
    struct sockaddr_in lane_sa[LANES][LANE_SIZE];
    Sender sender;
} FastTx;

enum { T_CALLS, T_DATAGRAMS, T_NO_ROUTE, T_ERRORS, T_PACKETS, T_COPIES, T_BYTES, T_MESSAGES, T_COUNT };

static int fasttx_init(FastTx *self, PyObject *args, PyObject *kwds) {
    if (!PyArg_ParseTuple(args, "")) return -1;
    Py_XSETREF(self->flows, PyDict_New());
    if (!self->arena) self->arena = PyMem_Malloc(ARENA);
    if (!self->packet) self->packet = PyMem_Malloc(RX_BUFFER);
    if (!self->flows || !self->arena || !self->packet) { PyErr_NoMemory(); return -1; }
    self->sender.gso = 1;
    return 0;
}

static void fasttx_clear_prefixes(FastTx *self) {
    for (int i = 0; i < self->nprefixes; i++) Py_CLEAR(self->prefixes[i].sealer);
    self->nprefixes = 0;
    Py_CLEAR(self->known);
}

static void fasttx_dealloc(FastTx *self) {
    fasttx_clear_prefixes(self);
    Py_XDECREF(self->flows);
    PyMem_Free(self->arena);
    PyMem_Free(self->packet);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static void tx_flush(FastTx *self, int fd, unsigned long long *counts) {
    for (int l = 0; l < self->nlanes; l++) {
        if (!self->lane_n[l]) continue;
        counts[T_CALLS]++;
        counts[T_DATAGRAMS] += self->lane_n[l];
        counts[T_MESSAGES] += (unsigned long long)send_runs(&self->sender, fd, self->lane_iov[l], self->lane_sa[l],
                                                            self->lane_n[l], &counts[T_NO_ROUTE], &counts[T_ERRORS]);
        self->lane_n[l] = 0;
    }
    self->nlanes = 0;
    self->used = 0;
}

/* Seal packet b (n bytes) once per route with one session sequence and queue the copies in the
 * lanes of their next hops (flushing when the arena or a lane is full). -1 with an exception. */
static int tx_queue(FastTx *self, int sock_fd, unsigned long long *counts, Sealer *sealer, const TxRoute *routes,
                    int nroutes, uint32_t send_time, const uint8_t *b, int n) {
    if (self->used + nroutes * (n + HEADER_SIZE + TAG_SIZE) > ARENA) tx_flush(self, sock_fd, counts);
    uint64_t seq = ++sealer->seq;
    for (int r = 0; r < nroutes; r++) {
        const TxRoute *route = &routes[r];
        int lane = 0;
        while (lane < self->nlanes && !same_address(&self->lane_addr[lane], &route->addr)) lane++;
        if (lane == LANES || (lane < self->nlanes && self->lane_n[lane] == LANE_SIZE)) {
            tx_flush(self, sock_fd, counts);
            lane = 0;
        }
        if (lane == self->nlanes) {
            self->lane_addr[lane] = route->addr;
            self->lane_n[lane] = 0;
            self->nlanes++;
        }
        uint8_t *out = self->arena + self->used;
        if (seal_into(sealer, out, KIND_DATA, route->path_id, route->channel, seq,
                      ++sealer->path_seq[route->path_id], send_time, b, n) < 0) {
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL: AES-256-GCM seal failed");
            return -1;
        }
        int size = n + HEADER_SIZE + TAG_SIZE;
        self->used += size;
        int j = self->lane_n[lane]++;
        self->lane_iov[lane][j].iov_base = out;
        self->lane_iov[lane][j].iov_len = (size_t)size;
        self->lane_sa[lane][j] = route->addr;
    }
    counts[T_PACKETS]++;
    counts[T_COPIES] += (unsigned long long)nroutes;
    counts[T_BYTES] += (unsigned long long)n * (unsigned long long)nroutes;
    return 0;
}

static const TxPrefix *tx_prefix(const FastTx *self, uint32_t dst) {
    for (int i = 0; i < self->nprefixes; i++)
        if ((dst & self->prefixes[i].mask) == self->prefixes[i].network) return &self->prefixes[i];
    return NULL;
}

/* new_flows(known, prefixes): send the packets of flows `known` (the daemon's flow table) does
 * not hold on the standard path of the peer whose prefix holds their destination, and hand them
 * up in `fresh` for the daemon's flow table and decision. prefixes: ((network, mask, sealer,
 * (host, port, path_id, channel)), ...), longest first. new_flows(None, ()) turns it off. */
static PyObject *fasttx_new_flows(FastTx *self, PyObject *args) {
    PyObject *known, *table;
    if (!PyArg_ParseTuple(args, "OO!", &known, &PyTuple_Type, &table)) return NULL;
    if (known != Py_None && !PyDict_Check(known)) {
        PyErr_SetString(PyExc_TypeError, "known: the daemon's flow dict, or None");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(table);
    if (n > MAX_PREFIXES) {
        PyErr_Format(PyExc_ValueError, "at most %d peer prefixes", MAX_PREFIXES);
        return NULL;
    }
    TxPrefix parsed[MAX_PREFIXES];
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *network, *mask, *sealer, *host, *port;
        int path_id, channel;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(table, i), "OOO!(OOii)", &network, &mask, &SealerType, &sealer,
                              &host, &port, &path_id, &channel))
            return NULL;
        unsigned long net = PyLong_AsUnsignedLong(network), msk = PyLong_AsUnsignedLong(mask);
        if (PyErr_Occurred()) return NULL;
        if (net > 0xFFFFFFFFUL || msk > 0xFFFFFFFFUL || (net & ~msk)) {
            PyErr_SetString(PyExc_ValueError, "a prefix is a 32-bit network and its mask");
            return NULL;
        }
        if (address_from(host, port, &parsed[i].route.addr) < 0) return NULL;
        parsed[i].network = (uint32_t)net;
        parsed[i].mask = (uint32_t)msk;
        parsed[i].route.path_id = (unsigned)path_id & 0xFF;
        parsed[i].route.channel = (uint16_t)channel;
        parsed[i].sealer = (Sealer *)sealer;
    }
    fasttx_clear_prefixes(self);
    if (known == Py_None) return Py_NewRef(Py_None);
    for (Py_ssize_t i = 0; i < n; i++) {
        self->prefixes[i] = parsed[i];
        Py_INCREF(parsed[i].sealer);
    }
    self->nprefixes = (int)n;
    self->known = Py_NewRef(known);
    return Py_NewRef(Py_None);
}

/* pump(tun_fd, sock_fd, max_packets, mtu, now_us) -> (slow, fresh, touched, counts)
 *
 * Reads up to max_packets from the TUN. A packet of a registered flow is sealed once per route
 * (one session sequence, a path sequence per path) and sent, in GSO runs per next hop. With
 * new_flows on, a packet of a flow the daemon's table does not hold yet is sent on its peer's
 * standard path and comes back in `fresh` as (flow bytes, packet), sent. Any other packet comes
 * back in `slow` (in order) for the daemon to send. `touched` lists each registered flow sent on
 * once, for the daemon's accounting (FastFlow.take). */
/* The body of pump: appends to slow, fresh and touched (a flow once, until its take()), adds to
 * counts; 0, or -1 with a Python error (what was sealed is sent either way). GIL held. */
static int pump_into(FastTx *self, int tun_fd, int sock_fd, int max_packets, int mtu, long long now_us,
                     PyObject *slow, PyObject *fresh, PyObject *touched, unsigned long long *counts) {
    PyObject *k = NULL;
    uint32_t send_time = (uint32_t)now_us;
    uint8_t *b = self->packet;
    self->nlanes = 0;
    self->used = 0;
    for (int i = 0; i < max_packets; i++) {
        ssize_t got = read(tun_fd, b, RX_BUFFER);
        if (got < 0) break;
        int n = (int)got;
        FastFlow *ff = NULL;
        const TxPrefix *prefix = NULL;
        if (n <= mtu && n >= 20 && (b[0] >> 4) == 4) {
            int ihl = (b[0] & 0x0F) * 4, proto = b[9];
            uint8_t key[13];
            int klen = 9;
            key[0] = b[9];
            memcpy(key + 1, b + 12, 8);
            if ((proto == 6 || proto == 17) && n >= ihl + 4) { memcpy(key + 9, b + ihl, 4); klen = 13; }
            k = PyBytes_FromStringAndSize((const char *)key, klen);
            if (!k) goto error;
            ff = (FastFlow *)PyDict_GetItemWithError(self->flows, k);
            if (!ff && PyErr_Occurred()) goto error;
            if (ff && !PyObject_TypeCheck((PyObject *)ff, &FastFlowType)) ff = NULL;
            if (!ff && self->known) {
                int held = PyDict_Contains(self->known, k);
                if (held < 0) goto error;
                if (!held) prefix = tx_prefix(self, be32(b + 16));
            }
        }
        if (ff) {
            if (tx_queue(self, sock_fd, counts, ff->sealer, ff->route, ff->nroutes, send_time, b, n) < 0) goto error;
            ff->packets++;
            ff->bytes += n;
            if (!ff->touched) {
                ff->touched = 1;
                if (PyList_Append(touched, (PyObject *)ff) < 0) goto error;
            }
        } else {
            PyObject *item = PyBytes_FromStringAndSize((const char *)b, n);
            if (!item) goto error;
            int failed;
            if (prefix) {
                if (tx_queue(self, sock_fd, counts, prefix->sealer, &prefix->route, 1, send_time, b, n) < 0) {
                    Py_DECREF(item);
                    goto error;
                }
                PyObject *pair = PyTuple_Pack(2, k, item);
                failed = !pair || PyList_Append(fresh, pair) < 0;
                Py_XDECREF(pair);
            } else {
                failed = PyList_Append(slow, item) < 0;
            }
            Py_DECREF(item);
            if (failed) goto error;
        }
        Py_CLEAR(k);
    }
    tx_flush(self, sock_fd, counts);
    return 0;
error:
    /* What was sealed is sent (its sequence numbers are spent). */
    tx_flush(self, sock_fd, counts);
    Py_XDECREF(k);
    return -1;
}

static PyObject *fasttx_pump(FastTx *self, PyObject *args) {
    int tun_fd, sock_fd, max_packets, mtu;
    long long now_us;
    if (!PyArg_ParseTuple(args, "iiiiL", &tun_fd, &sock_fd, &max_packets, &mtu, &now_us)) return NULL;
    unsigned long long counts[T_COUNT] = {0};
    PyObject *slow = PyList_New(0), *fresh = PyList_New(0), *touched = PyList_New(0), *ct = NULL, *out = NULL;
    if (slow && fresh && touched) {
        if (pump_into(self, tun_fd, sock_fd, max_packets, mtu, now_us, slow, fresh, touched, counts) < 0) {
            /* the flows sent on keep their counts for the next pump's `touched` */
            for (Py_ssize_t t = 0; t < PyList_GET_SIZE(touched); t++)
                ((FastFlow *)PyList_GET_ITEM(touched, t))->touched = 0;
        } else if ((ct = counts_tuple(counts, T_COUNT)) != NULL) {
            out = PyTuple_Pack(4, slow, fresh, touched, ct);
        }
    }
    Py_XDECREF(slow);
    Py_XDECREF(fresh);
    Py_XDECREF(touched);
    Py_XDECREF(ct);
    return out;
}

static PyMethodDef fasttx_methods[] = {
    {"pump", (PyCFunction)fasttx_pump, METH_VARARGS,
     "pump(tun_fd, sock_fd, max_packets, mtu, now_us) -> (slow packets, fresh (flow, packet) sent, touched flows, counts)"},
    {"new_flows", (PyCFunction)fasttx_new_flows, METH_VARARGS,
     "new_flows(known, prefixes): send new flows' packets on the standard path (None, () turns it off)"},
    {NULL}};

static PyMemberDef fasttx_members[] = {
    {"flows", T_OBJECT, offsetof(FastTx, flows), READONLY, "flow bytes -> FastFlow: what pump carries itself"},
    {NULL}};

static PyTypeObject FastTxType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "topomirror.dataplane._fastpath.FastTx",
    .tp_basicsize = sizeof(FastTx),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FastTx(): a node's native send loop for the flows registered in .flows",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)fasttx_init,
    .tp_dealloc = (destructor)fasttx_dealloc,
    .tp_methods = fasttx_methods,
    .tp_members = fasttx_members,
};


/* ------------------------------------------------------------------------------------------ */
/* PacketThread: the packet loops on a thread of their own                                    */
/*
 * A node's event loop wakes for every datagram and every TUN packet, runs Python to call `drain`
 * or `pump`, and only then is the packet sent, delivered or forwarded: on this machine that costs
 * tens of microseconds per hop (docs/BENCHMARKS.md, data plane). Here a thread waits on the socket
 * and the TUN (epoll, without the GIL) and calls the same drain and pump bodies the moment
 * something arrives, holding the GIL only for that call. The shared state (peers, windows,
 * meters, the relay table, the flows handed down) is only touched with the GIL held, as before:
 * the thread changes who calls drain and pump, not what they do.
 *
 * What needs Python is appended to lists and the daemon's loop is woken through `notify_fd` (an
 * eventfd):
 * - receive side: `take()` hands over the datagrams for Engine.receive; `release()` says the
 *   CONTROLs among them were handled (until then a datagram on a channel we cannot forward
 *   follows them up: the CONTROL may install that very channel);
 * - send side: `take_tx()` hands over (slow packets, fresh (flow, packet) already sent, touched
 *   flows). While slow packets wait for Python, or while `gate` is set and a flow was sent on
 *   (budgeted flows: the daemon charges every wake-up before the next), the thread reads no more
 *   from the TUN, so no packet overtakes one that Python holds; `release_tx()` resumes. Fresh
 *   packets (new flows, sent on the standard path already) wake Python without holding the TUN:
 *   until Python has taken a new flow into its table, its next packets are new to the loop too and
 *   go out the same way. Touched flows alone do not wake Python: the daemon takes them on a timer.
 * With `busy_pps` set (the daemon's `listen.packet_thread: auto`), a thread that carried more than
 * that many packets per second over a 20 ms window stops watching the socket and the TUN, sets
 * `handed_off` and wakes the daemon, whose event loop reads them until it calls `resume()`: a thread
 * that answers every packet at once makes small batches and many wake-ups, its own and the
 * receiving application's, which at high rates cost more than the latency they save.
 * `counts()` and `tx_counts()` hand over the counters of drain and pump. */

typedef struct {
    PyObject_HEAD
    FastRx *rx;
    FastTx *tx;                  /* NULL: the TUN stays with the daemon's loop */
    int sock_fd, tun_fd, notify_fd, max_calls, mtu;
    int wake_fd, epoll_fd;       /* wake_fd (eventfd) stops the thread */
    int started, stopping, failed;
    int hold;                    /* a CONTROL went up and is not handled yet (see drain_into) */
    int gate;                    /* set by the daemon: hand over every wake-up that sent on a flow */
    int tx_paused;               /* the TUN is not watched until release_tx() */
    int busy_pps;                /* > 0: above this rate (datagrams in + packets out per second) */
    int handed_off;              /* ... the thread stops watching both and the daemon's loop takes over */
    long long window_us;         /* start of the rate window */
    unsigned long long window_packets;
    pthread_t thread;
    PyObject *slow;              /* (datagram, arrival_us) for Engine.receive, in arrival order */
    PyObject *tx_slow, *tx_fresh, *tx_touched;
    PyObject *error;             /* the exception that stopped the thread, if one did */
    unsigned long long counts[C_COUNT];
    unsigned long long tx_counts[T_COUNT];
    unsigned long long wakeups, tx_wakeups;
    unsigned long long gil_wait_us, gil_held_us, gil_wait_max_us; /* per wake-up: waiting for the GIL, holding it */
} PacketThread;

/* CLOCK_MONOTONIC in microseconds (the daemon's clock: time.monotonic). */
static long long monotonic_us(void) {
    struct timespec mono;
    clock_gettime(CLOCK_MONOTONIC, &mono);
    return (long long)mono.tv_sec * 1000000LL + mono.tv_nsec / 1000;
}

static void packetthread_close_fds(PacketThread *self) {
    if (self->epoll_fd >= 0) close(self->epoll_fd);
    if (self->wake_fd >= 0) close(self->wake_fd);
    self->epoll_fd = self->wake_fd = -1;
}

static int packetthread_init(PacketThread *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"rx", "tx", "sock_fd", "tun_fd", "notify_fd", "max_calls", "mtu", NULL};
    PyObject *rx, *tx;
    int mtu = 1500;
    if (self->started) {
        PyErr_SetString(PyExc_RuntimeError, "PacketThread already started");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!Oiiii|i", kwlist, &FastRxType, &rx, &tx, &self->sock_fd,
                                     &self->tun_fd, &self->notify_fd, &self->max_calls, &mtu))
        return -1;
    if (tx != Py_None && !PyObject_TypeCheck(tx, &FastTxType)) {
        PyErr_SetString(PyExc_TypeError, "tx must be a FastTx or None");
        return -1;
    }
    if (tx != Py_None && self->tun_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "a send loop needs the TUN (tun_fd)");
        return -1;
    }
    self->mtu = mtu;
    Py_INCREF(rx);
    Py_XSETREF(self->rx, (FastRx *)rx);
    Py_XSETREF(self->tx, tx == Py_None ? NULL : (FastTx *)Py_NewRef(tx));
    Py_XSETREF(self->slow, PyList_New(0));
    Py_XSETREF(self->tx_slow, PyList_New(0));
    Py_XSETREF(self->tx_fresh, PyList_New(0));
    Py_XSETREF(self->tx_touched, PyList_New(0));
    if (!self->slow || !self->tx_slow || !self->tx_fresh || !self->tx_touched) return -1;
    return 0;
}

static void fd_signal(int fd) {
    uint64_t one = 1;
    ssize_t ignored = write(fd, &one, sizeof(one));
    (void)ignored;
}

/* Watch the TUN (armed) or not while Python holds some of its packets. */
static void packetthread_watch_tun(PacketThread *self, int armed) {
    struct epoll_event ev = {.events = armed ? EPOLLIN : 0};
    ev.data.fd = self->tun_fd;
    epoll_ctl(self->epoll_fd, EPOLL_CTL_MOD, self->tun_fd, &ev);
}

/* Watch the socket, or not while the daemon's loop has the packets (handed off). */
static void packetthread_watch_sock(PacketThread *self, int armed) {
    struct epoll_event ev = {.events = armed ? EPOLLIN : 0};
    ev.data.fd = self->sock_fd;
    epoll_ctl(self->epoll_fd, EPOLL_CTL_MOD, self->sock_fd, &ev);
}

/* Busy for the thread (`busy_pps`): it answers each packet as soon as it comes, which at high rates
 * means small batches and many wake-ups, its own and the receiving application's. Above the rate the
 * daemon's event loop, which batches by being slower to wake, carries the packets; `resume()` gives
 * them back. 1 when the thread handed off. */
static int packetthread_busy(PacketThread *self, long long now_us, unsigned long long carried) {
    if (self->busy_pps <= 0) return 0;
    self->window_packets += carried;
    long long elapsed = now_us - self->window_us;
    if (elapsed < 20000) return 0;
    int busy = self->window_packets * 1000000ULL > (unsigned long long)self->busy_pps * (unsigned long long)elapsed;
    self->window_us = now_us;
    self->window_packets = 0;
    if (!busy) return 0;
    self->handed_off = 1;
    packetthread_watch_sock(self, 0);
    if (self->tx && !self->tx_paused) packetthread_watch_tun(self, 0);
    return 1;
}

static void packetthread_fail(PacketThread *self) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    Py_XSETREF(self->error, value);
    self->failed = 1;
}

static void *packetthread_main(void *arg) {
    PacketThread *self = arg;
    struct epoll_event events[3];
    /* One thread state for the thread's life (PyGILState_Ensure per wake-up would create and free
     * one each time); the GIL is let go while the thread waits. */
    PyGILState_STATE gil = PyGILState_Ensure();
    PyThreadState *state = PyEval_SaveThread();
    for (;;) {
        int n = epoll_wait(self->epoll_fd, events, 3, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;
        int sock_ready = 0, tun_ready = 0, stop = 0;
        for (int i = 0; i < n; i++) {
            if (events[i].data.fd == self->wake_fd) stop = 1;
            else if (events[i].data.fd == self->sock_fd) sock_ready = 1;
            else if (events[i].data.fd == self->tun_fd) tun_ready = 1;
        }
        if (stop) break;
        if (!sock_ready && !tun_ready) continue;
        struct timespec mono, real;
        clock_gettime(CLOCK_MONOTONIC, &mono);
        clock_gettime(CLOCK_REALTIME, &real);
        double now = (double)mono.tv_sec + mono.tv_nsec / 1e9;
        long long now_us = (long long)mono.tv_sec * 1000000LL + mono.tv_nsec / 1000;
        long long offset_ns = ((long long)mono.tv_sec - real.tv_sec) * 1000000000LL + (mono.tv_nsec - real.tv_nsec);
        PyEval_RestoreThread(state);
        long long held_from = monotonic_us();
        unsigned long long waited = held_from > now_us ? (unsigned long long)(held_from - now_us) : 0;
        self->gil_wait_us += waited;
        if (waited > self->gil_wait_max_us) self->gil_wait_max_us = waited;
        if (self->stopping) { state = PyEval_SaveThread(); break; }
        int notify = 0, rc = 0;
        unsigned long long carried0 = self->counts[C_DATAGRAMS] + self->tx_counts[T_PACKETS];
        if (self->handed_off) sock_ready = tun_ready = 0; /* (events from before the hand-off) */
        if (tun_ready && self->tx && !self->tx_paused) {
            Py_ssize_t slow0 = PyList_GET_SIZE(self->tx_slow), fresh0 = PyList_GET_SIZE(self->tx_fresh);
            unsigned long long sent0 = self->tx_counts[T_PACKETS];
            rc = pump_into(self->tx, self->tun_fd, self->sock_fd, self->max_calls, self->mtu, now_us, self->tx_slow,
                           self->tx_fresh, self->tx_touched, self->tx_counts);
            self->tx_wakeups++;
            if (PyList_GET_SIZE(self->tx_slow) > slow0 || (self->gate && self->tx_counts[T_PACKETS] > sent0)) {
                self->tx_paused = notify = 1;
                packetthread_watch_tun(self, 0);
            } else if (PyList_GET_SIZE(self->tx_fresh) > fresh0) {
                notify = 1; /* sent already: Python learns of the new flows, nothing waits for it */
            }
        }
        if (rc == 0 && sock_ready) {
            Py_ssize_t before = PyList_GET_SIZE(self->slow);
            rc = drain_into(self->rx, self->sock_fd, self->tun_fd, now, offset_ns, self->max_calls, self->slow,
                            &self->hold, self->counts);
            self->wakeups++;
            if (PyList_GET_SIZE(self->slow) > before) notify = 1;
        }
        if (rc < 0) {
            packetthread_fail(self);
            notify = 1;
        } else if (!self->handed_off &&
                   packetthread_busy(self, now_us, self->counts[C_DATAGRAMS] + self->tx_counts[T_PACKETS] - carried0)) {
            notify = 1;
        }
        long long held_to = monotonic_us();
        self->gil_held_us += held_to > held_from ? (unsigned long long)(held_to - held_from) : 0;
        state = PyEval_SaveThread();
        if (notify) fd_signal(self->notify_fd);
        if (rc < 0) break;
    }
    PyEval_RestoreThread(state);
    PyGILState_Release(gil);
    return NULL;
}

static PyObject *packetthread_start(PacketThread *self, PyObject *unused) {
    if (!self->rx || !self->slow) {
        PyErr_SetString(PyExc_RuntimeError, "PacketThread not initialised");
        return NULL;
    }
    if (self->started) Py_RETURN_NONE;
    self->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    self->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (self->wake_fd < 0 || self->epoll_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        packetthread_close_fds(self);
        return NULL;
    }
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.fd = self->sock_fd;
    int bad = epoll_ctl(self->epoll_fd, EPOLL_CTL_ADD, self->sock_fd, &ev) < 0;
    ev.data.fd = self->wake_fd;
    bad = bad || epoll_ctl(self->epoll_fd, EPOLL_CTL_ADD, self->wake_fd, &ev) < 0;
    if (self->tx) {
        ev.data.fd = self->tun_fd;
        bad = bad || epoll_ctl(self->epoll_fd, EPOLL_CTL_ADD, self->tun_fd, &ev) < 0;
    }
    if (bad) {
        PyErr_SetFromErrno(PyExc_OSError);
        packetthread_close_fds(self);
        return NULL;
    }
    self->window_us = monotonic_us();
    self->window_packets = 0;
    Py_INCREF(self); /* the thread's reference, dropped by stop() */
    int err = pthread_create(&self->thread, NULL, packetthread_main, self);
    if (err) {
        Py_DECREF(self);
        packetthread_close_fds(self);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    pthread_setname_np(self->thread, "tm-packets"); /* for top -H, ps -T and chrt */
    self->started = 1;
    Py_RETURN_NONE;
}

/* stop(): the thread ends after the call it is in, if any; joined here (GIL released). */
static PyObject *packetthread_stop(PacketThread *self, PyObject *unused) {
    if (!self->started) Py_RETURN_NONE;
    self->stopping = 1;
    fd_signal(self->wake_fd);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(self->thread, NULL);
    Py_END_ALLOW_THREADS
    self->started = 0;
    packetthread_close_fds(self);
    Py_DECREF(self);
    Py_RETURN_NONE;
}

static PyObject *packetthread_raise(PacketThread *self) {
    PyObject *error = self->error;
    self->error = NULL;
    PyErr_SetObject((PyObject *)Py_TYPE(error), error);
    Py_DECREF(error);
    return NULL;
}

/* Hand *list over and leave a new empty one in its place. */
static PyObject *swap_list(PyObject **list) {
    PyObject *fresh = PyList_New(0);
    if (!fresh) return NULL;
    PyObject *out = *list;
    *list = fresh;
    return out;
}

/* take() -> slow: what came up from the socket since the last take (raises what stopped the thread). */
static PyObject *packetthread_take(PacketThread *self, PyObject *unused) {
    if (self->error) return packetthread_raise(self);
    return swap_list(&self->slow);
}

/* take_tx() -> (slow, fresh, touched) from the TUN since the last take_tx. */
static PyObject *packetthread_take_tx(PacketThread *self, PyObject *unused) {
    if (self->error) return packetthread_raise(self);
    PyObject *slow = swap_list(&self->tx_slow), *fresh = slow ? swap_list(&self->tx_fresh) : NULL;
    PyObject *touched = fresh ? swap_list(&self->tx_touched) : NULL;
    PyObject *out = touched ? PyTuple_Pack(3, slow, fresh, touched) : NULL;
    Py_XDECREF(slow);
    Py_XDECREF(fresh);
    Py_XDECREF(touched);
    return out;
}

static PyObject *packetthread_counts(PacketThread *self, PyObject *unused) {
    PyObject *ct = counts_tuple(self->counts, C_COUNT);
    if (ct) memset(self->counts, 0, sizeof(self->counts));
    return ct;
}

static PyObject *packetthread_tx_counts(PacketThread *self, PyObject *unused) {
    PyObject *ct = counts_tuple(self->tx_counts, T_COUNT);
    if (ct) memset(self->tx_counts, 0, sizeof(self->tx_counts));
    return ct;
}

/* release(): the CONTROLs taken so far are handled; channels no longer follow them up. */
static PyObject *packetthread_release(PacketThread *self, PyObject *unused) {
    /* A CONTROL appended since the last take is still waiting: keep holding. */
    Py_ssize_t n = PyList_GET_SIZE(self->slow);
    int pending = 0;
    for (Py_ssize_t i = 0; i < n && !pending; i++) {
        PyObject *datagram = PyTuple_GET_ITEM(PyList_GET_ITEM(self->slow, i), 0);
        pending = PyBytes_GET_SIZE(datagram) > 0 && (PyBytes_AS_STRING(datagram)[0] & 0x0F) == KIND_CONTROL;
    }
    self->hold = pending;
    Py_RETURN_NONE;
}

/* release_tx(): Python handled what it took; the thread reads the TUN again. */
static PyObject *packetthread_release_tx(PacketThread *self, PyObject *unused) {
    if (self->tx_paused && PyList_GET_SIZE(self->tx_slow) == 0) {
        self->tx_paused = 0;
        if (self->started && !self->handed_off) packetthread_watch_tun(self, 1);
    }
    Py_RETURN_NONE;
}

/* resume(): the daemon's loop hands the packets back (the rate fell); the thread watches again. */
static PyObject *packetthread_resume(PacketThread *self, PyObject *unused) {
    if (self->handed_off) {
        self->handed_off = 0;
        self->window_us = monotonic_us();
        self->window_packets = 0;
        if (self->started) {
            packetthread_watch_sock(self, 1);
            if (self->tx && !self->tx_paused) packetthread_watch_tun(self, 1);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *packetthread_alive(PacketThread *self, void *closure) {
    return PyBool_FromLong(self->started && !self->failed);
}

static void packetthread_dealloc(PacketThread *self) {
    /* a started thread holds a reference: a PacketThread is only freed after stop() */
    packetthread_close_fds(self);
    Py_XDECREF(self->rx);
    Py_XDECREF(self->tx);
    Py_XDECREF(self->slow);
    Py_XDECREF(self->tx_slow);
    Py_XDECREF(self->tx_fresh);
    Py_XDECREF(self->tx_touched);
    Py_XDECREF(self->error);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *packetthread_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PacketThread *self = (PacketThread *)PyType_GenericNew(type, args, kwds);
    if (self) self->epoll_fd = self->wake_fd = -1;
    return (PyObject *)self;
}

static PyMethodDef packetthread_methods[] = {
    {"start", (PyCFunction)packetthread_start, METH_NOARGS, "start(): run the packet loops on the thread from now on"},
    {"stop", (PyCFunction)packetthread_stop, METH_NOARGS, "stop(): end the thread and wait for it"},
    {"take", (PyCFunction)packetthread_take, METH_NOARGS,
     "take() -> the datagrams for Engine.receive since the last take; raises what stopped the thread"},
    {"take_tx", (PyCFunction)packetthread_take_tx, METH_NOARGS,
     "take_tx() -> (slow packets, fresh (flow, packet) sent, touched flows) since the last take_tx"},
    {"counts", (PyCFunction)packetthread_counts, METH_NOARGS, "counts() -> drain's counters since the last call"},
    {"tx_counts", (PyCFunction)packetthread_tx_counts, METH_NOARGS, "tx_counts() -> pump's counters since the last call"},
    {"release", (PyCFunction)packetthread_release, METH_NOARGS,
     "release(): the CONTROLs taken were handled (channel datagrams stop following them up)"},
    {"resume", (PyCFunction)packetthread_resume, METH_NOARGS,
     "resume(): after a hand-off, the thread watches the socket and the TUN again"},
    {"release_tx", (PyCFunction)packetthread_release_tx, METH_NOARGS,
     "release_tx(): what take_tx handed over was handled; read the TUN again"},
    {NULL}};

static PyMemberDef packetthread_members[] = {
    {"wakeups", T_ULONGLONG, offsetof(PacketThread, wakeups), READONLY, "drains run on the thread"},
    {"tx_wakeups", T_ULONGLONG, offsetof(PacketThread, tx_wakeups), READONLY, "pumps run on the thread"},
    {"gil_wait_us", T_ULONGLONG, offsetof(PacketThread, gil_wait_us), READONLY,
     "microseconds the thread waited for the GIL after a wake-up, in all"},
    {"gil_wait_max_us", T_ULONGLONG, offsetof(PacketThread, gil_wait_max_us), READONLY,
     "the longest of those waits"},
    {"gil_held_us", T_ULONGLONG, offsetof(PacketThread, gil_held_us), READONLY,
     "microseconds the thread held the GIL (its drains and pumps), in all"},
    {"gate", T_INT, offsetof(PacketThread, gate), 0, "non-zero: every wake-up that sent on a flow goes to Python"},
    {"tx_paused", T_INT, offsetof(PacketThread, tx_paused), READONLY, "the TUN waits for release_tx()"},
    {"busy_pps", T_INT, offsetof(PacketThread, busy_pps), 0,
     "> 0: above this rate (datagrams in + packets out per second) the thread hands off to the daemon's loop"},
    {"handed_off", T_INT, offsetof(PacketThread, handed_off), READONLY, "the daemon's loop has the packets"},
    {NULL}};

static PyGetSetDef packetthread_getset[] = {
    {"alive", (getter)packetthread_alive, NULL, "started and not failed", NULL}, {NULL}};

static PyTypeObject PacketThreadType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "topomirror.dataplane._fastpath.PacketThread",
    .tp_basicsize = sizeof(PacketThread),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PacketThread(rx, tx, sock_fd, tun_fd, notify_fd, max_calls, mtu=1500): drain and pump on a thread "
              "of their own (tx None: receive only).",
    .tp_new = packetthread_new,
    .tp_init = (initproc)packetthread_init,
    .tp_dealloc = (destructor)packetthread_dealloc,
    .tp_methods = packetthread_methods,
    .tp_members = packetthread_members,
    .tp_getset = packetthread_getset,
};

/* ------------------------------------------------------------------------------------------ */
/* forward: the bare forwarder behind `lab.forward`, the yardstick of bench dataplane's floors  */

#define FWD_KEY 16          /* a datagram's number: lab.probe's sequence number and send time */
#define FWD_SLOTS (1 << 16) /* per generation; a generation is full at half of it */
#define FWD_TARGETS 8

typedef struct {
    uint8_t used[FWD_SLOTS];
    uint8_t keys[FWD_SLOTS][FWD_KEY];
    int count;
} FwdSeen;

static uint32_t fwd_hash(const uint8_t *key) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (int i = 0; i < FWD_KEY; i++) h = (h ^ key[i]) * 16777619u;
    return h;
}

/* 1 if key is in the table; else 0 and, with insert, it is added. */
static int fwd_seen(FwdSeen *t, const uint8_t *key, int insert) {
    uint32_t i = fwd_hash(key) & (FWD_SLOTS - 1);
    while (t->used[i]) {
        if (!memcmp(t->keys[i], key, FWD_KEY)) return 1;
        i = (i + 1) & (FWD_SLOTS - 1);
    }
    if (insert) {
        t->used[i] = 1;
        memcpy(t->keys[i], key, FWD_KEY);
        t->count++;
    }
    return 0;
}

/* forward(in_fd, out_fd, targets, first_copy): receive each datagram on in_fd and send it to
 * every target ((host, port), ...) from out_fd, one recv and one sendto per copy, with the GIL
 * released, until a receive fails (the socket closed) or a signal ends the process. first_copy:
 * pass only the first datagram of each number (its first 16 bytes), remembering between one and
 * two generations of 32768 numbers. */
static PyObject *forward(PyObject *self, PyObject *args) {
    int in_fd, out_fd, first_copy;
    PyObject *targets;
    if (!PyArg_ParseTuple(args, "iiO!p", &in_fd, &out_fd, &PyTuple_Type, &targets, &first_copy)) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(targets);
    if (n < 1 || n > FWD_TARGETS) {
        PyErr_Format(PyExc_ValueError, "between 1 and %d targets", FWD_TARGETS);
        return NULL;
    }
    struct sockaddr_in to[FWD_TARGETS];
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *host, *port;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(targets, i), "OO", &host, &port)) return NULL;
        if (address_from(host, port, &to[i]) < 0) return NULL;
    }
    FwdSeen *seen = NULL, *older = NULL;
    uint8_t *buffer = PyMem_RawMalloc(65536);
    if (first_copy) {
        seen = PyMem_RawCalloc(1, sizeof(FwdSeen));
        older = PyMem_RawCalloc(1, sizeof(FwdSeen));
    }
    if (!buffer || (first_copy && (!seen || !older))) {
        PyMem_RawFree(buffer);
        PyMem_RawFree(seen);
        PyMem_RawFree(older);
        return PyErr_NoMemory();
    }
    ssize_t got = 0;
    int saved = 0;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        got = recv(in_fd, buffer, 65536, 0);
        if (got < 0) {
            if (errno == EINTR) continue;
            saved = errno;
            break;
        }
        if (first_copy) {
            uint8_t key[FWD_KEY] = {0};
            memcpy(key, buffer, got < FWD_KEY ? (size_t)got : FWD_KEY);
            if (fwd_seen(older, key, 0) || fwd_seen(seen, key, 0)) continue;
            if (seen->count >= FWD_SLOTS / 2) {
                FwdSeen *t = older;
                older = seen;
                seen = t;
                memset(seen, 0, sizeof(FwdSeen));
            }
            fwd_seen(seen, key, 1);
        }
        for (Py_ssize_t i = 0; i < n; i++)
            (void)sendto(out_fd, buffer, (size_t)got, 0, (struct sockaddr *)&to[i], sizeof(to[i])); /* loss, as on a network */
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(buffer);
    PyMem_RawFree(seen);
    PyMem_RawFree(older);
    errno = saved;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static PyMethodDef module_methods[] = {
    {"set_verdicts", set_verdicts, METH_O, "set_verdicts((NEW, DUPLICATE, REPLAY, TOO_OLD)): what check returns"},
    {"forward", forward, METH_VARARGS,
     "forward(in_fd, out_fd, ((host, port), ...), first_copy): the bare forwarder, GIL released, until recv fails"},
    {NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath",
    "topomirror's per-packet loop in C (de-dup window, path meter, AES-256-GCM seal/open, receive loop).",
    -1, module_methods};

PyMODINIT_FUNC PyInit__fastpath(void) {
    static struct { const char *name; PyTypeObject *type; } types[] = {
        {"DedupWindow", &DedupWindowType}, {"PathMeter", &PathMeterType}, {"Sealer", &SealerType},
        {"FastRx", &FastRxType}, {"PacketThread", &PacketThreadType}, {"FastFlow", &FastFlowType}, {"FastTx", &FastTxType}};
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (PyType_Ready(types[i].type) < 0 || PyModule_AddObjectRef(m, types[i].name, (PyObject *)types[i].type) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
