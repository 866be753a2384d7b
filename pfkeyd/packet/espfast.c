/*
 * espfast: the bytes and the crypto of ESP's AEAD fast path, in one call per packet.
 *
 * Theory of operation
 * -------------------
 * pfkeyd/packet/esp.py keeps every decision (eligibility, the sequence and IV
 * counters, the wrap rule, the replay window, counting); this module only builds
 * and opens the bytes of an IPv4 datagram under AES-GCM-16 (RFC 4106) or
 * ChaCha20-Poly1305 (RFC 7634), through OpenSSL's libcrypto EVP interface, with
 * the exact layout of esp.py's pure-Python fast path:
 *
 *   IPv4 header (20, no options) | SPI | Seq_lo | IV (the 8-byte per-SA counter)
 *   | ciphertext of (payload | pad 1,2,3.. or zeros | pad length | next header) | tag (16)
 *
 * nonce = salt (4) | IV (8); AAD = SPI | Seq_lo, or SPI | Seq_hi | Seq_lo with ESN
 * (RFC 4106 section 5, RFC 4303 section 2.2.1).  The padding is FreeBSD's for a
 * block of 1 padded to 4.  The header is the input's with the total length, the
 * protocol and a fresh checksum.
 *
 * Aead holds one keyed EVP_CIPHER_CTX per direction for the life of an SA; each
 * packet only sets the nonce.  The key stays inside OpenSSL (which cleanses it
 * when the context is freed); the salt is cleansed on dealloc; neither appears in
 * a repr.  EspV4 adds the framing (SPI, ESN, pad contents) over an Aead.
 *
 * The GIL stays held for the whole call.  That is what makes sharing an SA's two
 * contexts safe (no other thread can enter the same context meanwhile); a packet
 * is at most 64 KiB and sealing 1400 bytes takes about half a microsecond; and
 * releasing it measured 0.04-0.05 us more per packet (bench/README.md), for
 * nothing on the daemon's single packet thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#define KIND_AES_GCM 0
#define KIND_CHACHA20_POLY1305 1
#define TAG_LEN 16
#define HDR 20          /* IPv4 header without options */
#define ESP_HDR 16      /* SPI, Seq_lo, IV */
#define MAX_PROTECT 65000
#define IPPROTO_ESP_ 50
#define IPPROTO_NONE_ 59

/* What EspV4.open returns instead of the datagram (esp.py maps them to Drops). */
#define OPEN_BADAUTH 1
#define OPEN_BADILEN 2
#define OPEN_BADPAD 3
#define OPEN_DUMMY 4

static const unsigned char SEQ_PAD[3] = {1, 2, 3};
static const unsigned char ZERO_PAD[3] = {0, 0, 0};

/* ------------------------------------------------------------------ buffers */

/* A read-only view of bytes, bytearray, memoryview or any C-contiguous buffer. */
typedef struct {
    const unsigned char *buf;
    Py_ssize_t len;
    Py_buffer view;
    int held;
} Bytes;

static int
bytes_get(PyObject *obj, Bytes *b, const char *what)
{
    if (PyBytes_CheckExact(obj)) {
        b->buf = (const unsigned char *)PyBytes_AS_STRING(obj);
        b->len = PyBytes_GET_SIZE(obj);
        b->held = 0;
        return 0;
    }
    if (PyObject_GetBuffer(obj, &b->view, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a bytes-like object, not %.100s", what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    b->buf = (const unsigned char *)b->view.buf;
    b->len = b->view.len;
    b->held = 1;
    return 0;
}

static void
bytes_release(Bytes *b)
{
    if (b->held) {
        PyBuffer_Release(&b->view);
        b->held = 0;
    }
}

static int
get_u64(PyObject *obj, uint64_t *out, const char *what)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", what);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_ValueError, "%s must be in 0..2**64-1", what);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

static inline void
put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static inline uint32_t
get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* The IPv4 header checksum (RFC 1071) of the 20 bytes at h, written into h[10:12]. */
static void
ipv4_checksum(unsigned char *h)
{
    uint32_t sum = 0;
    h[10] = h[11] = 0;
    for (int i = 0; i < HDR; i += 2)
        sum += (uint32_t)h[i] << 8 | h[i + 1];
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    sum = ~sum & 0xFFFF;
    h[10] = (unsigned char)(sum >> 8);
    h[11] = (unsigned char)sum;
}

/* ------------------------------------------------------------------ Aead */

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
    unsigned char salt[4];
    int kind;
} AeadObject;

static PyTypeObject Aead_Type;

static void
Aead_dealloc(AeadObject *self)
{
    EVP_CIPHER_CTX_free(self->enc); /* cleanses the key schedule */
    EVP_CIPHER_CTX_free(self->dec);
    OPENSSL_cleanse(self->salt, sizeof self->salt);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Aead_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"kind", "key", "salt", NULL};
    int kind;
    Py_buffer key, salt;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iy*y*:Aead", kwlist, &kind, &key, &salt))
        return NULL;
    const EVP_CIPHER *cipher = NULL;
    if (kind == KIND_AES_GCM) {
        cipher = key.len == 16 ? EVP_aes_128_gcm() : key.len == 24 ? EVP_aes_192_gcm()
                 : key.len == 32                   ? EVP_aes_256_gcm()
                                                   : NULL;
        if (cipher == NULL)
            PyErr_Format(PyExc_ValueError, "AES-GCM takes a key of 16, 24 or 32 bytes, not %zd", key.len);
    }
    else if (kind == KIND_CHACHA20_POLY1305) {
        cipher = key.len == 32 ? EVP_chacha20_poly1305() : NULL;
        if (cipher == NULL)
            PyErr_Format(PyExc_ValueError, "ChaCha20-Poly1305 takes a key of 32 bytes, not %zd", key.len);
    }
    else
        PyErr_Format(PyExc_ValueError, "unknown AEAD kind %d", kind);
    if (cipher != NULL && salt.len != 4) {
        PyErr_Format(PyExc_ValueError, "the salt is 4 bytes, not %zd", salt.len);
        cipher = NULL;
    }
    AeadObject *self = NULL;
    if (cipher != NULL)
        self = (AeadObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->kind = kind;
        memcpy(self->salt, salt.buf, 4);
        self->enc = EVP_CIPHER_CTX_new();
        self->dec = EVP_CIPHER_CTX_new();
        /* Keyed once; the default nonce length of both ciphers is 12 bytes. */
        if (self->enc == NULL || self->dec == NULL
            || EVP_EncryptInit_ex(self->enc, cipher, NULL, (const unsigned char *)key.buf, NULL) != 1
            || EVP_DecryptInit_ex(self->dec, cipher, NULL, (const unsigned char *)key.buf, NULL) != 1
            || EVP_CIPHER_CTX_get_iv_length(self->enc) != 12) {
            Py_DECREF(self);
            self = NULL;
            PyErr_SetString(PyExc_RuntimeError, "libcrypto could not set up the AEAD context");
        }
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&salt);
    return (PyObject *)self;
}

static PyObject *
Aead_repr(AeadObject *self)
{
    return PyUnicode_FromFormat("<espfast.Aead %s>", self->kind == KIND_AES_GCM ? "AES-GCM" : "ChaCha20-Poly1305");
}

/* Seal data1 | data2 under nonce salt | iv and aad into out (then the tag). 0 or -1 (error set). */
static int
aead_seal(AeadObject *a, const unsigned char iv[8], const unsigned char *aad, int aadlen, const unsigned char *d1,
          int n1, const unsigned char *d2, int n2, unsigned char *out)
{
    unsigned char nonce[12];
    int l, done = 0;
    EVP_CIPHER_CTX *c = a->enc;
    memcpy(nonce, a->salt, 4);
    memcpy(nonce + 4, iv, 8);
    if (EVP_EncryptInit_ex(c, NULL, NULL, NULL, nonce) != 1 || EVP_EncryptUpdate(c, NULL, &l, aad, aadlen) != 1)
        goto fail;
    if (n1 > 0) {
        if (EVP_EncryptUpdate(c, out, &l, d1, n1) != 1)
            goto fail;
        done += l;
    }
    if (n2 > 0) {
        if (EVP_EncryptUpdate(c, out + done, &l, d2, n2) != 1)
            goto fail;
        done += l;
    }
    if (EVP_EncryptFinal_ex(c, out + done, &l) != 1)
        goto fail;
    done += l;
    if (done != n1 + n2 || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, out + done) != 1)
        goto fail;
    return 0;
fail:
    PyErr_SetString(PyExc_RuntimeError, "libcrypto failed to seal");
    return -1;
}

/* Open ct (n bytes, then the tag) into out.  1 authentic, 0 not, -1 error (set). */
static int
aead_open(AeadObject *a, const unsigned char iv[8], const unsigned char *aad, int aadlen, const unsigned char *ct,
          int n, unsigned char *out)
{
    unsigned char nonce[12], tag[TAG_LEN];
    int l, done = 0;
    EVP_CIPHER_CTX *c = a->dec;
    memcpy(nonce, a->salt, 4);
    memcpy(nonce + 4, iv, 8);
    memcpy(tag, ct + n, TAG_LEN);
    if (EVP_DecryptInit_ex(c, NULL, NULL, NULL, nonce) != 1 || EVP_DecryptUpdate(c, NULL, &l, aad, aadlen) != 1)
        goto fail;
    if (n > 0) {
        if (EVP_DecryptUpdate(c, out, &l, ct, n) != 1)
            goto fail;
        done = l;
    }
    if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, tag) != 1)
        goto fail;
    if (EVP_DecryptFinal_ex(c, out + done, &l) != 1)
        return 0;
    return done + l == n ? 1 : 0;
fail:
    PyErr_SetString(PyExc_RuntimeError, "libcrypto failed to open");
    return -1;
}

static PyTypeObject Aead_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pfkeyd.packet.espfast.Aead",
    .tp_basicsize = sizeof(AeadObject),
    .tp_dealloc = (destructor)Aead_dealloc,
    .tp_repr = (reprfunc)Aead_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = PyDoc_STR("Aead(kind, key, salt): a keyed AES-GCM (kind 0) or ChaCha20-Poly1305 (kind 1) "
                        "with its 4-byte salt; the key stays inside libcrypto."),
    .tp_new = Aead_new,
};

/* ------------------------------------------------------------------ EspV4 */

typedef struct {
    PyObject_HEAD
    AeadObject *aead;
    uint32_t spi;
    int esn;
    int zero_pad;
} EspObject;

static void
Esp_dealloc(EspObject *self)
{
    Py_XDECREF(self->aead);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Esp_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"aead", "spi", "esn", "zero_pad", NULL};
    PyObject *aead, *spi_obj;
    uint64_t spi;
    int esn, zero_pad;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!Opp:EspV4", kwlist, &Aead_Type, &aead, &spi_obj, &esn, &zero_pad))
        return NULL;
    if (get_u64(spi_obj, &spi, "spi") < 0) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError))
            return NULL; /* not an int */
        PyErr_Clear();
        spi = UINT64_MAX;
    }
    if (spi > 0xFFFFFFFFULL) {
        PyErr_SetString(PyExc_ValueError, "the SPI is 32 bits");
        return NULL;
    }
    EspObject *self = (EspObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    Py_INCREF(aead);
    self->aead = (AeadObject *)aead;
    self->spi = (uint32_t)spi;
    self->esn = esn;
    self->zero_pad = zero_pad;
    return (PyObject *)self;
}

static PyObject *
Esp_repr(EspObject *self)
{
    char spi[11];
    snprintf(spi, sizeof spi, "0x%08lx", (unsigned long)self->spi);
    return PyUnicode_FromFormat("<espfast.EspV4 spi=%s esn=%d>", spi, self->esn);
}

/* The AAD of sequence number seq (64 bits) into aad; its length. */
static int
esp_aad(EspObject *e, uint32_t seq_hi, uint32_t seq_lo, unsigned char aad[12])
{
    put32(aad, e->spi);
    if (e->esn) {
        put32(aad + 4, seq_hi);
        put32(aad + 8, seq_lo);
        return 12;
    }
    put32(aad + 4, seq_lo);
    return 8;
}

/*
 * out = header (20 bytes copied from hdr, then total length, protocol 50 and the
 * checksum set) | SPI | Seq_lo | IV | seal(data | trailer) | tag, for a payload
 * data of n bytes whose next header is nh.  New reference or NULL.
 */
static PyObject *
esp_build(EspObject *e, const unsigned char *hdr, const unsigned char *data, Py_ssize_t n, int nh, uint64_t seq,
          uint64_t iv)
{
    int npad = (int)((4 - (n + 2) % 4) % 4);
    Py_ssize_t total = HDR + ESP_HDR + n + npad + 2 + TAG_LEN;
    unsigned char trailer[5], aad[12];
    PyObject *res = PyBytes_FromStringAndSize(NULL, total);
    if (res == NULL)
        return NULL;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(res);
    memcpy(o, hdr, HDR);
    o[2] = (unsigned char)(total >> 8);
    o[3] = (unsigned char)total;
    o[9] = IPPROTO_ESP_;
    ipv4_checksum(o);
    put32(o + HDR, e->spi);
    put32(o + HDR + 4, (uint32_t)seq);
    put32(o + HDR + 8, (uint32_t)(iv >> 32));
    put32(o + HDR + 12, (uint32_t)iv);
    memcpy(trailer, e->zero_pad ? ZERO_PAD : SEQ_PAD, (size_t)npad);
    trailer[npad] = (unsigned char)npad;
    trailer[npad + 1] = (unsigned char)nh;
    int aadlen = esp_aad(e, (uint32_t)(seq >> 32), (uint32_t)seq, aad);
    if (aead_seal(e->aead, o + HDR + 8, aad, aadlen, data, (int)n, trailer, npad + 2, o + HDR + ESP_HDR) < 0) {
        Py_DECREF(res);
        return NULL;
    }
    return res;
}

PyDoc_STRVAR(Esp_protect_doc,
             "protect(datagram, seq, iv) -> bytes | None\n\n"
             "ESP over an IPv4 datagram without options (20 to 65000 bytes, total length\n"
             "matching): sequence number seq (64 bits), explicit IV iv.  None for any other\n"
             "datagram (nothing is done).");

static PyObject *
Esp_protect(EspObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t seq, iv;
    Bytes d;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "protect(datagram, seq, iv) takes 3 arguments");
        return NULL;
    }
    if (get_u64(args[1], &seq, "seq") < 0 || get_u64(args[2], &iv, "iv") < 0 || bytes_get(args[0], &d, "datagram") < 0)
        return NULL;
    PyObject *res;
    if (d.len < HDR || d.len > MAX_PROTECT || d.buf[0] != 0x45 || ((Py_ssize_t)d.buf[2] << 8 | d.buf[3]) != d.len) {
        res = Py_None;
        Py_INCREF(res);
    }
    else
        res = esp_build(self, d.buf, d.buf + HDR, d.len - HDR, d.buf[9], seq, iv);
    bytes_release(&d);
    return res;
}

PyDoc_STRVAR(Esp_tunnel_doc,
             "tunnel(outer, inner, seq, iv) -> bytes\n\n"
             "ESP in tunnel mode: outer (a 20-byte IPv4 header; its length, protocol and\n"
             "checksum are set) | ESP header | sealed inner datagram (next header 4).");

static PyObject *
Esp_tunnel(EspObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t seq, iv;
    Bytes outer, inner;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "tunnel(outer, inner, seq, iv) takes 4 arguments");
        return NULL;
    }
    if (get_u64(args[2], &seq, "seq") < 0 || get_u64(args[3], &iv, "iv") < 0 || bytes_get(args[0], &outer, "outer") < 0)
        return NULL;
    if (bytes_get(args[1], &inner, "inner") < 0) {
        bytes_release(&outer);
        return NULL;
    }
    PyObject *res = NULL;
    if (outer.len != HDR)
        PyErr_Format(PyExc_ValueError, "the outer header is 20 bytes, not %zd", outer.len);
    else if (inner.len > 65535 - HDR - ESP_HDR - 5 - TAG_LEN)
        PyErr_Format(PyExc_ValueError, "an inner datagram of %zd bytes does not fit", inner.len);
    else
        res = esp_build(self, outer.buf, inner.buf, inner.len, 4, seq, iv);
    bytes_release(&inner);
    bytes_release(&outer);
    return res;
}

PyDoc_STRVAR(Esp_peek_doc,
             "peek(datagram) -> int | None\n\n"
             "The 32-bit sequence number of an IPv4 ESP datagram without options (total length\n"
             "matching, a multiple of 4, over 52 bytes) for this SA's SPI; -1 when the SPI\n"
             "differs; None for any other datagram.");

static PyObject *
Esp_peek(EspObject *self, PyObject *datagram)
{
    Bytes d;
    if (bytes_get(datagram, &d, "datagram") < 0)
        return NULL;
    PyObject *res;
    const unsigned char *p = d.buf;
    if (d.len <= HDR + ESP_HDR + TAG_LEN || d.len & 3 || p[0] != 0x45 || p[9] != IPPROTO_ESP_
        || ((Py_ssize_t)p[2] << 8 | p[3]) != d.len) {
        res = Py_None;
        Py_INCREF(res);
    }
    else if (get32(p + HDR) != self->spi)
        res = PyLong_FromLong(-1);
    else
        res = PyLong_FromUnsignedLong(get32(p + HDR + 4));
    bytes_release(&d);
    return res;
}

PyDoc_STRVAR(Esp_open_doc,
             "open(datagram, seq_hi) -> bytes | int\n\n"
             "Verify and decrypt a datagram peek() accepted (Seq_hi enters the AAD with\n"
             "ESN): the inner datagram (the header with the next header restored), or 1\n"
             "(ICV wrong), 2 (pad length too long), 3 (pad contents wrong), 4 (next\n"
             "header 59, a dummy packet).  ValueError for a datagram peek() refuses.");

static PyObject *
Esp_open(EspObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t hi;
    Bytes d;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "open(datagram, seq_hi) takes 2 arguments");
        return NULL;
    }
    if (get_u64(args[1], &hi, "seq_hi") < 0 || bytes_get(args[0], &d, "datagram") < 0)
        return NULL;
    if (hi > 0xFFFFFFFFULL) {
        bytes_release(&d);
        PyErr_SetString(PyExc_ValueError, "seq_hi is 32 bits");
        return NULL;
    }
    const unsigned char *p = d.buf;
    if (d.len <= HDR + ESP_HDR + TAG_LEN || d.len > 65535 || p[0] != 0x45 || p[9] != IPPROTO_ESP_) {
        bytes_release(&d);
        PyErr_SetString(PyExc_ValueError, "not an IPv4 ESP datagram for this path");
        return NULL;
    }
    Py_ssize_t n = d.len - HDR - ESP_HDR - TAG_LEN; /* payload and trailer, >= 1 */
    unsigned char aad[12];
    int aadlen = esp_aad(self, (uint32_t)hi, get32(p + HDR + 4), aad);
    PyObject *res = PyBytes_FromStringAndSize(NULL, HDR + n);
    if (res == NULL) {
        bytes_release(&d);
        return NULL;
    }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(res);
    int ok = aead_open(self->aead, p + HDR + 8, aad, aadlen, p + HDR + ESP_HDR, (int)n, o + HDR);
    int code = 0;
    if (ok < 0) {
        bytes_release(&d);
        Py_DECREF(res);
        return NULL;
    }
    unsigned char *plain = o + HDR;
    int npad = n >= 2 ? plain[n - 2] : 0, nh = plain[n - 1];
    if (!ok)
        code = OPEN_BADAUTH;
    else if (n < 2 || npad + 2 > n)
        code = OPEN_BADILEN;
    else if (npad && plain[n - 3] != npad)
        code = OPEN_BADPAD;
    else if (nh == IPPROTO_NONE_)
        code = OPEN_DUMMY;
    if (code) {
        bytes_release(&d);
        Py_DECREF(res);
        return PyLong_FromLong(code);
    }
    Py_ssize_t total = HDR + n - npad - 2;
    memcpy(o, p, HDR);
    o[2] = (unsigned char)(total >> 8);
    o[3] = (unsigned char)total;
    o[9] = (unsigned char)nh;
    ipv4_checksum(o);
    bytes_release(&d);
    if (_PyBytes_Resize(&res, total) < 0)
        return NULL;
    return res;
}

static PyMethodDef Esp_methods[] = {
    {"protect", (PyCFunction)(void (*)(void))Esp_protect, METH_FASTCALL, Esp_protect_doc},
    {"tunnel", (PyCFunction)(void (*)(void))Esp_tunnel, METH_FASTCALL, Esp_tunnel_doc},
    {"peek", (PyCFunction)Esp_peek, METH_O, Esp_peek_doc},
    {"open", (PyCFunction)(void (*)(void))Esp_open, METH_FASTCALL, Esp_open_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject Esp_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pfkeyd.packet.espfast.EspV4",
    .tp_basicsize = sizeof(EspObject),
    .tp_dealloc = (destructor)Esp_dealloc,
    .tp_repr = (reprfunc)Esp_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = PyDoc_STR("EspV4(aead, spi, esn, zero_pad): ESP framing of IPv4 datagrams over an Aead."),
    .tp_methods = Esp_methods,
    .tp_new = Esp_new,
};

/* ------------------------------------------------------------------ module */

PyDoc_STRVAR(ipv4_ok_doc,
             "ipv4_ok(datagram) -> bool\n\n"
             "Whether datagram starts with an IPv4 header without options whose total\n"
             "length is the datagram's and whose checksum is right.");

static PyObject *
espfast_ipv4_ok(PyObject *module, PyObject *datagram)
{
    (void)module;
    Bytes d;
    if (bytes_get(datagram, &d, "datagram") < 0)
        return NULL;
    int ok = 0;
    if (d.len >= HDR && d.buf[0] == 0x45 && ((Py_ssize_t)d.buf[2] << 8 | d.buf[3]) == d.len) {
        uint32_t sum = 0;
        for (int i = 0; i < HDR; i += 2)
            sum += (uint32_t)d.buf[i] << 8 | d.buf[i + 1];
        while (sum >> 16)
            sum = (sum & 0xFFFF) + (sum >> 16);
        ok = sum == 0xFFFF;
    }
    bytes_release(&d);
    return PyBool_FromLong(ok);
}

static PyMethodDef module_methods[] = {
    {"ipv4_ok", (PyCFunction)espfast_ipv4_ok, METH_O, ipv4_ok_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef espfast_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pfkeyd.packet.espfast",
    .m_doc = "The bytes and the crypto of ESP's AEAD fast path (libcrypto EVP); esp.py decides.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit_espfast(void)
{
    if (PyType_Ready(&Aead_Type) < 0 || PyType_Ready(&Esp_Type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&espfast_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "AES_GCM", KIND_AES_GCM) < 0
        || PyModule_AddIntConstant(m, "CHACHA20_POLY1305", KIND_CHACHA20_POLY1305) < 0
        || PyModule_AddIntConstant(m, "OPEN_BADAUTH", OPEN_BADAUTH) < 0
        || PyModule_AddIntConstant(m, "OPEN_BADILEN", OPEN_BADILEN) < 0
        || PyModule_AddIntConstant(m, "OPEN_BADPAD", OPEN_BADPAD) < 0
        || PyModule_AddIntConstant(m, "OPEN_DUMMY", OPEN_DUMMY) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&Aead_Type);
    if (PyModule_AddObject(m, "Aead", (PyObject *)&Aead_Type) < 0) {
        Py_DECREF(&Aead_Type);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&Esp_Type);
    if (PyModule_AddObject(m, "EspV4", (PyObject *)&Esp_Type) < 0) {
        Py_DECREF(&Esp_Type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
