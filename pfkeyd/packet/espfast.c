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
 *
 * Loop, at the end of this file, is the data plane's packet loop for the flows
 * the Python side installs in it: it moves their packets between the TUN and the
 * raw sockets with these same steps, and hands everything else back (see the
 * comment above its code).  It lives here because it seals and opens with EspV4
 * directly.
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

/* The one's-complement sum (RFC 1071) of n bytes at p, added to sum, unfolded. */
static uint64_t
sum16(const unsigned char *p, Py_ssize_t n, uint64_t sum)
{
    for (; n > 1; p += 2, n -= 2)
        sum += (uint32_t)p[0] << 8 | p[1];
    if (n)
        sum += (uint32_t)p[0] << 8;
    return sum;
}

static uint16_t
fold(uint64_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (uint16_t)sum;
}

/* The IPv4 header checksum of the ihl bytes at h, written into h[10:12]. */
static void
ipv4_checksum_of(unsigned char *h, Py_ssize_t ihl)
{
    h[10] = h[11] = 0;
    uint16_t c = (uint16_t)~fold(sum16(h, ihl, 0));
    h[10] = (unsigned char)(c >> 8);
    h[11] = (unsigned char)c;
}

/* The same for an IPv4 header without options. */
static void
ipv4_checksum(unsigned char *h)
{
    ipv4_checksum_of(h, HDR);
}

/* Whether the len bytes at d are an IPv4 datagram without options whose total
   length is len and whose header checksum is right. */
static int
ipv4_whole(const unsigned char *d, Py_ssize_t len)
{
    return len >= HDR && d[0] == 0x45 && ((Py_ssize_t)d[2] << 8 | d[3]) == len && fold(sum16(d, HDR, 0)) == 0xFFFF;
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
 * Seal into o, whose first 20 bytes already hold the outer header template: sets its
 * total length, protocol 50 and checksum, then SPI | Seq_lo | IV | seal(data |
 * trailer) | tag, for a payload data of n bytes whose next header is nh.  The total
 * length, or -1 (error set).  o has room for HDR + ESP_HDR + n + 3 + 2 + TAG_LEN.
 */
static Py_ssize_t
esp_seal_into(EspObject *e, unsigned char *o, const unsigned char *data, Py_ssize_t n, int nh, uint64_t seq,
              uint64_t iv)
{
    int npad = (int)((4 - (n + 2) % 4) % 4);
    Py_ssize_t total = HDR + ESP_HDR + n + npad + 2 + TAG_LEN;
    unsigned char trailer[5], aad[12];
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
    if (aead_seal(e->aead, o + HDR + 8, aad, aadlen, data, (int)n, trailer, npad + 2, o + HDR + ESP_HDR) < 0)
        return -1;
    return total;
}

/* esp_seal_into a new bytes object, the header copied from hdr.  New reference or NULL. */
static PyObject *
esp_build(EspObject *e, const unsigned char *hdr, const unsigned char *data, Py_ssize_t n, int nh, uint64_t seq,
          uint64_t iv)
{
    int npad = (int)((4 - (n + 2) % 4) % 4);
    PyObject *res = PyBytes_FromStringAndSize(NULL, HDR + ESP_HDR + n + npad + 2 + TAG_LEN);
    if (res == NULL)
        return NULL;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(res);
    memcpy(o, hdr, HDR);
    if (esp_seal_into(e, o, data, n, nh, seq, iv) < 0) {
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

/*
 * Open the IPv4 ESP datagram p (len bytes, which peek() would accept but for the SPI)
 * into o (room for len bytes): 0 and *outlen = the inner datagram's length (the
 * header with the next header restored), or an OPEN_* code (nothing in o is
 * meaningful then), or -1 (error set).  Seq_hi enters the AAD with ESN.
 */
static int
esp_open_into(EspObject *e, const unsigned char *p, Py_ssize_t len, uint32_t hi, unsigned char *o, Py_ssize_t *outlen)
{
    Py_ssize_t n = len - HDR - ESP_HDR - TAG_LEN; /* payload and trailer, >= 1 */
    unsigned char aad[12];
    int aadlen = esp_aad(e, hi, get32(p + HDR + 4), aad);
    int ok = aead_open(e->aead, p + HDR + 8, aad, aadlen, p + HDR + ESP_HDR, (int)n, o + HDR);
    if (ok < 0)
        return -1;
    unsigned char *plain = o + HDR;
    int npad = n >= 2 ? plain[n - 2] : 0, nh = plain[n - 1];
    if (!ok)
        return OPEN_BADAUTH;
    if (n < 2 || npad + 2 > n)
        return OPEN_BADILEN;
    if (npad && plain[n - 3] != npad)
        return OPEN_BADPAD;
    if (nh == IPPROTO_NONE_)
        return OPEN_DUMMY;
    Py_ssize_t total = HDR + n - npad - 2;
    memcpy(o, p, HDR);
    o[2] = (unsigned char)(total >> 8);
    o[3] = (unsigned char)total;
    o[9] = (unsigned char)nh;
    ipv4_checksum(o);
    *outlen = total;
    return 0;
}

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
    PyObject *res = PyBytes_FromStringAndSize(NULL, d.len);
    if (res == NULL) {
        bytes_release(&d);
        return NULL;
    }
    Py_ssize_t total = 0;
    int code = esp_open_into(self, p, d.len, (uint32_t)hi, (unsigned char *)PyBytes_AS_STRING(res), &total);
    bytes_release(&d);
    if (code != 0) {
        Py_DECREF(res);
        return code < 0 ? NULL : PyLong_FromLong(code);
    }
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

/* ------------------------------------------------------------------ Loop */

/*
 * Loop: the data plane's packet thread, compiled, for the SAs of the one-step tunnel
 * path (pfkeyd/dataplane/plane.py, "The compiled loop").
 *
 * The Python packet thread spent 60-180 us a wake-up on work that takes 4-8 us
 * (bench/README.md): the interpreter's cold start after an idle wait, four times
 * per round trip.  This loop waits in epoll_wait (the GIL released only there) and
 * moves the packets of installed flows without running any Python code:
 *
 *   out: TUN read -> the 13-byte flow key (source, destination, protocol, ports as
 *        plane.parse_flow gives them) in the table of installed flows -> the
 *        outer header and ESP sealed in one buffer -> sendto on the raw socket;
 *   in:  recv on the raw ESP socket -> SPI and destination in the table of
 *        installed SAs -> a sequence number above the replay window -> open ->
 *        an inner IPv4 datagram that fills the payload and carries nothing more of
 *        ours -> its flow key among the flows whose inbound policy ESP satisfies
 *        -> write to the TUN.
 *
 * The Python side decides everything and installs only what it decided: a flow
 * whose verdict is one ESP tunnel SA on the compiled path (add_out), an SA the
 * inbound lookup found (add_in), an inbound flow whose policy asks for no more than
 * ESP (allow_in).  The SA's state stays where the Python path keeps it (the
 * SaRuntime's seq, iv_counter, bytes and packets, its ReplayWindow's last, bits
 * and count), read and written here under the GIL, so that both paths share one
 * sequence counter and one window.  The counters are the Python path's tables (the
 * ESP table of the engine's Counters, the IoCounters table).
 *
 * Anything else is handed back, untouched and in order, as an item of wait()'s
 * list: a datagram of a flow not installed, a sequence number inside the window,
 * a counter about to wrap, a send the socket refused, a descriptor watched for the
 * Python side.  Once one packet of a batch is handed back, the rest of that batch
 * is too, so that nothing overtakes it.  Every wake-up first reads the watched
 * attributes (the engine's generation, the socket policies' generation) and
 * compares them with the stamp of the last reset(), without running any Python
 * code; when one moved (the SAD, the SPD, a knob or the socket policies changed),
 * the tables are emptied and everything is handed back until the Python side,
 * having decided again, calls reset().
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define LOOP_BATCH 64       /* datagrams read from one descriptor per wake-up */
#define LOOP_EVENTS 16
#define LOOP_TABLE_MAX 65536
#define LOOP_BUF 65536
#define LOOP_MAX_INNER (65535 - HDR - ESP_HDR - 3 - TAG_LEN)
#define FLOW_KEY 13
#define VNET_HDR 10 /* the TUN's offloads: see tun_frames */
#define VNET_NEEDS_CSUM 1
#define VNET_GSO_NONE 0
#define VNET_GSO_TCPV4 1

/* The kinds of wait()'s items: (kind, a, b, c). */
#define ITEM_FD 0      /* (FD, fd, None, None): a watched descriptor is readable */
#define ITEM_TUN 1     /* (TUN, datagram, None, None): read from the TUN, untouched */
#define ITEM_ESP 2     /* (ESP, datagram, None, None): received on the ESP socket, untouched */
#define ITEM_SEND 3    /* (SEND, datagram, None, None): protected and counted; the socket refused it */
#define ITEM_WRITE 4   /* (WRITE, inner, None, None): accepted; the TUN refused it */
#define ITEM_ACCEPT 5  /* (ACCEPT, inner, bound, received): opened and counted; the inbound check is Python's */
#define ITEM_OPENED 6  /* (OPENED, opened, bound, received): ESP undone, the window moved; the rest is Python's */

typedef struct {
    PyObject_HEAD
    EspObject *esp;
    PyObject *state;       /* the SaRuntime */
    PyObject *bound;       /* inbound: the Bound handed back with ACCEPT and OPENED */
    unsigned char src[4];  /* outbound: the tunnel's ends */
    unsigned char dst[4];  /* both: the SA's destination */
    int ttl, dfbit, ecn;
    uint64_t wrap_mask;
} EntryObject;

static void
Entry_dealloc(EntryObject *self)
{
    Py_XDECREF(self->esp);
    Py_XDECREF(self->state);
    Py_XDECREF(self->bound);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject Entry_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pfkeyd.packet.espfast._Entry",
    .tp_basicsize = sizeof(EntryObject),
    .tp_dealloc = (destructor)Entry_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = PyDoc_STR("One installed flow or SA of a Loop (internal)."),
};

/* The names the loop reads, writes and counts under (interned at import). */
static PyObject *S_seq, *S_iv_counter, *S_bytes, *S_packets, *S_replay, *S_last, *S_bits, *S_count, *S_size;
static PyObject *S_output, *S_obytes, *S_input, *S_ibytes, *S_badauth, *S_badilen, *S_badpad, *S_dummy;
static PyObject *S_tun_read, *S_tun_write, *S_raw_send, *S_esp_receive, *S_tun_gso, *S_tun_drop_offload, *S_tun_gro;

typedef struct {
    PyObject_HEAD
    int epfd;
    int tun, rx, tx;       /* borrowed: the Python objects own them */
    PyObject *out;         /* bytes flow key -> Entry */
    PyObject *in;          /* int SPI -> Entry */
    PyObject *allow;       /* set of inbound flow keys */
    PyObject *esp_counts;  /* the ESP table of the engine's Counters */
    PyObject *io_counts;   /* the IoCounters table */
    PyObject *watched;     /* tuple of (object, attribute name) */
    PyObject *stamp;       /* their values at the last reset(), a tuple; NULL: stale */
    int holding;
    int vnet;              /* the TUN carries virtio_net_hdr: its offloads are on */
    unsigned long long fast_out, fast_in;
    unsigned char *buf, *obuf, *sbuf;
    unsigned char *gbuf;   /* inbound TCP segments being joined (gro_add), behind a virtio_net_hdr */
    Py_ssize_t glen;       /* the joined datagram's length so far (0: none) */
    int gsegs, gmss;       /* segments joined, and the payload of each but the last */
    uint32_t gnext;        /* the sequence number that continues it */
    unsigned char rnd[512];
    size_t rpos;
} LoopObject;

static int
count_add(PyObject *table, PyObject *name, long long n)
{
    if (n == 0)
        return 0;
    PyObject *v = PyDict_GetItemWithError(table, name);
    long long cur = 0;
    if (v != NULL) {
        cur = PyLong_AsLongLong(v);
        if (cur == -1 && PyErr_Occurred())
            return -1;
    }
    else if (PyErr_Occurred())
        return -1;
    PyObject *nv = PyLong_FromLongLong(cur + n);
    if (nv == NULL)
        return -1;
    int r = PyDict_SetItem(table, name, nv);
    Py_DECREF(nv);
    return r;
}

static int
attr_u64(PyObject *obj, PyObject *name, uint64_t *out)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    int r = get_u64(v, out, "a counter");
    Py_DECREF(v);
    return r;
}

static int
set_u64(PyObject *obj, PyObject *name, uint64_t value)
{
    PyObject *v = PyLong_FromUnsignedLongLong(value);
    if (v == NULL)
        return -1;
    int r = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return r;
}

static int
add_u64(PyObject *obj, PyObject *name, uint64_t n)
{
    uint64_t v;
    if (attr_u64(obj, name, &v) < 0)
        return -1;
    return set_u64(obj, name, v + n);
}

/*
 * The flow key of an IPv4 datagram of n bytes with header length ihl (bytes), as
 * plane.parse_flow gives it: source, destination, protocol, then the ports of TCP,
 * UDP, SCTP and UDP-Lite, or ICMP's type and code, each as 16 bits (0 for a
 * non-first fragment or a datagram too short for them).
 */
static void
flow_key(const unsigned char *dg, Py_ssize_t n, int ihl, unsigned char key[FLOW_KEY])
{
    int proto = dg[9];
    memcpy(key, dg + 12, 8);
    key[8] = (unsigned char)proto;
    memset(key + 9, 0, 4);
    int first = !((dg[6] << 8 | dg[7]) & 0x1FFF);
    if (!first || ihl + 4 > n)
        return;
    const unsigned char *l4 = dg + ihl;
    if (proto == 6 || proto == 17 || proto == 132 || proto == 136)
        memcpy(key + 9, l4, 4);
    else if (proto == 1) {
        key[10] = l4[0];
        key[12] = l4[1];
    }
}

/* A borrowed Entry for key in table, NULL if none (or an error, set). */
static EntryObject *
lookup(PyObject *table, PyObject *key)
{
    if (key == NULL)
        return NULL;
    PyObject *hit = PyDict_GetItemWithError(table, key);
    Py_DECREF(key);
    return (EntryObject *)hit;
}

static uint16_t
loop_ident(LoopObject *L)
{
    if (L->rpos + 2 > sizeof L->rnd) {
        ssize_t got = getrandom(L->rnd, sizeof L->rnd, 0);
        if (got != (ssize_t)sizeof L->rnd) {
            /* getrandom does not fail on a buffer this small once the pool is ready */
            for (size_t i = got > 0 ? (size_t)got : 0; i < sizeof L->rnd; i++)
                L->rnd[i] = (unsigned char)(L->fast_out * 131 + i);
        }
        L->rpos = 0;
    }
    uint16_t v = (uint16_t)(L->rnd[L->rpos] << 8 | L->rnd[L->rpos + 1]);
    L->rpos += 2;
    return v;
}

/* Append (kind, a, b, c) to items: a and c are stolen (new references, c may be
   NULL for None; either NULL after an error fails), b is borrowed (NULL: None). */
static int
hand_back(PyObject *items, int kind, PyObject *a, PyObject *b, PyObject *c, int has_c)
{
    PyObject *k = PyLong_FromLong(kind);
    PyObject *t = NULL;
    if (k != NULL && a != NULL && (c != NULL || !has_c))
        t = PyTuple_Pack(4, k, a, b ? b : Py_None, c ? c : Py_None);
    Py_XDECREF(k);
    Py_XDECREF(a);
    Py_XDECREF(c);
    if (t == NULL)
        return -1;
    int r = PyList_Append(items, t);
    Py_DECREF(t);
    return r;
}

static inline PyObject *
bytes_of(const unsigned char *p, Py_ssize_t n)
{
    return PyBytes_FromStringAndSize((const char *)p, n);
}

/* ------------------------------------------------ the TUN's offloads (virtio_net_hdr) */

/*
 * With IFF_VNET_HDR and TUNSETOFFLOAD (TUN_F_CSUM | TUN_F_TSO4), every datagram
 * read from the TUN comes behind a 10-byte virtio_net_hdr (linux/virtio_net.h,
 * host byte order): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
 * The kernel then leaves two jobs to the reader, which a NIC would do:
 *
 *   NEEDS_CSUM: the checksum of the bytes from csum_start to the end, whose field
 *     at csum_start + csum_offset already holds the pseudo-header's sum, is to be
 *     folded, complemented and stored there (skb_checksum_help; 0 is sent as 0xFFFF);
 *   GSO_TCPV4: one TCP segment of up to 64 KB is to be cut into gso_size pieces of
 *     payload, each with a copy of the IPv4 and TCP headers: the IPv4 ID counted up
 *     from the first, the total length and header checksum set, the sequence number
 *     advanced, FIN and PSH kept for the last piece only and CWR for the first only,
 *     the TCP checksum computed whole (tcp_gso_segment, inet_gso_segment).
 *
 * So TCP through the tunnel is read once per 64 KB and cut here, instead of going
 * through the kernel's TCP output and the TUN once per segment; the wire carries the
 * same MSS-sized ESP datagrams as without the offloads.  Any other kind of GSO is not
 * asked for; one that still arrives is dropped and counted (tun.drop.offload).
 */

/* Each datagram a frame read from an offloading TUN stands for, in order, through
   emit(ctx, datagram, length) (0, or -1 to stop with an error set).  The number of
   datagrams, -1 on error, or -2 when the frame is one this reader cannot take (the
   caller counts and drops it). */
typedef int (*emit_fn)(void *ctx, const unsigned char *dg, Py_ssize_t n);

static Py_ssize_t
tun_frames(unsigned char *frame, Py_ssize_t len, unsigned char *seg, emit_fn emit, void *ctx)
{
    if (len < VNET_HDR)
        return -2;
    const unsigned char *h = frame;
    unsigned char *p = frame + VNET_HDR;
    Py_ssize_t n = len - VNET_HDR;
    int gso = h[1];
    Py_ssize_t size = h[4] | h[5] << 8, start = h[6] | h[7] << 8, off = h[8] | h[9] << 8;
    if (gso == VNET_GSO_NONE) {
        if (h[0] & VNET_NEEDS_CSUM) {
            if (start + off + 2 > n)
                return -2;
            uint16_t c = (uint16_t)~fold(sum16(p + start, n - start, 0));
            if (c == 0)
                c = 0xFFFF;
            p[start + off] = (unsigned char)(c >> 8);
            p[start + off + 1] = (unsigned char)c;
        }
        return emit(ctx, p, n) < 0 ? -1 : 1;
    }
    if (gso != VNET_GSO_TCPV4 || n < HDR || p[0] >> 4 != 4 || p[9] != 6 || size == 0)
        return -2;
    Py_ssize_t ihl = (p[0] & 0x0F) * 4;
    if (ihl < HDR || ihl + 20 > n || (p[ihl + 12] >> 4) * 4 < 20 || ihl + (p[ihl + 12] >> 4) * 4 > n)
        return -2;
    Py_ssize_t hl = ihl + (p[ihl + 12] >> 4) * 4, data = n - hl, count = 0;
    uint32_t seq = get32(p + ihl + 4);
    unsigned id = (unsigned)(p[4] << 8 | p[5]);
    for (Py_ssize_t at = 0; at < data || count == 0; at += size, count++) {
        Py_ssize_t piece = data - at < size ? data - at : size, total = hl + piece;
        memcpy(seg, p, (size_t)hl);
        memcpy(seg + hl, p + hl + at, (size_t)piece);
        seg[2] = (unsigned char)(total >> 8);
        seg[3] = (unsigned char)total;
        seg[4] = (unsigned char)((id + count) >> 8);
        seg[5] = (unsigned char)(id + count);
        ipv4_checksum_of(seg, ihl);
        unsigned char *t = seg + ihl;
        put32(t + 4, seq + (uint32_t)at);
        if (at + piece < data)
            t[13] &= (unsigned char)~0x09; /* FIN and PSH: the last piece's */
        if (count > 0)
            t[13] &= (unsigned char)~0x80; /* CWR: the first piece's */
        t[16] = t[17] = 0;
        uint64_t sum = sum16(seg + 12, 8, 6 + (uint64_t)(total - ihl));
        uint16_t c = (uint16_t)~fold(sum16(t, total - ihl, sum));
        t[16] = (unsigned char)(c >> 8);
        t[17] = (unsigned char)c;
        if (emit(ctx, seg, total) < 0)
            return -1;
    }
    return count;
}

/*
 * One datagram read from the TUN: 1 taken (sent, or handed back as SEND), 0 not
 * ours (nothing changed), -1 error (set).
 */
static int
loop_out(LoopObject *L, const unsigned char *dg, Py_ssize_t n, PyObject *items)
{
    if (L->stamp == NULL || n > LOOP_MAX_INNER || !ipv4_whole(dg, n))
        return 0; /* not ours; a wrong header the general path repairs first */
    unsigned char key[FLOW_KEY];
    flow_key(dg, n, HDR, key);
    EntryObject *e = lookup(L->out, bytes_of(key, FLOW_KEY));
    if (e == NULL)
        return PyErr_Occurred() ? -1 : 0;
    uint64_t seq, iv;
    if (attr_u64(e->state, S_seq, &seq) < 0 || attr_u64(e->state, S_iv_counter, &iv) < 0)
        return -1;
    if (e->wrap_mask && (seq & e->wrap_mask) == e->wrap_mask)
        return 0; /* the Python path counts the wrap */
    seq += 1;
    unsigned char *o = L->obuf;
    int tos = dg[1];
    if (e->ecn == 1) /* ECN_ALLOWED: CE becomes ECT(0) */
        tos = (tos & 3) == 3 ? tos & ~1 : tos;
    else if (e->ecn != -1) /* FORBIDDEN and any other value but NOCARE (-1): Not-ECT */
        tos &= ~3;
    int df = e->dfbit == 1 || (e->dfbit >= 2 && dg[6] & 0x40);
    uint16_t ident = loop_ident(L);
    o[0] = 0x45;
    o[1] = (unsigned char)tos;
    o[4] = (unsigned char)(ident >> 8);
    o[5] = (unsigned char)ident;
    o[6] = df ? 0x40 : 0;
    o[7] = 0;
    o[8] = (unsigned char)e->ttl;
    memcpy(o + 12, e->src, 4);
    memcpy(o + 16, e->dst, 4);
    Py_ssize_t total = esp_seal_into(e->esp, o, dg, n, 4, seq, iv);
    if (total < 0)
        return -1;
    if (set_u64(e->state, S_seq, seq) < 0 || set_u64(e->state, S_iv_counter, iv + 1) < 0
        || add_u64(e->state, S_bytes, (uint64_t)total) < 0 || add_u64(e->state, S_packets, 1) < 0
        || count_add(L->esp_counts, S_output, 1) < 0 || count_add(L->esp_counts, S_obytes, n) < 0)
        return -1;
    L->fast_out++;
    struct sockaddr_in to = {.sin_family = AF_INET};
    memcpy(&to.sin_addr, e->dst, 4);
    if (sendto(L->tx, o, (size_t)total, 0, (struct sockaddr *)&to, sizeof to) == total)
        return count_add(L->io_counts, S_raw_send, 1) < 0 ? -1 : 1;
    /* full (EAGAIN), too big to go unfragmented (EMSGSIZE), or refused: the Python
       sender waits, fragments or counts the drop by its errno */
    return hand_back(items, ITEM_SEND, bytes_of(o, total), NULL, NULL, 0) < 0 ? -1 : 1;
}

static const unsigned char MAYBE_MORE[] = {50, 51, 108, 4, 41, 0, 43, 60};

/*
 * Joining inbound TCP segments (GRO), on a TUN with offloads: consecutive segments
 * of one TCP/IPv4 flow that arrive in one batch are written to the TUN as one
 * datagram of up to 64 KB behind a virtio_net_hdr that says GSO_TCPV4 (gso_size the
 * segments' payload, the TCP checksum left to finish with the pseudo-header's sum
 * in its field, as the kernel itself hands such datagrams over), so that the
 * receiving stack runs once per batch instead of once per segment, as it does
 * behind a NIC with GRO.  Segments join when everything but the sequence number,
 * the IPv4 ID, the lengths and the checksums is the same (addresses, TOS, TTL, DF,
 * ports, acknowledgement, header length, flags, window and options, as Linux's
 * tcp_gro_receive asks), the sequence numbers follow on, and every segment but the
 * last carries gso_size bytes; flags other than ACK end a run (PSH is allowed on
 * its last segment).  What is joined is written before the batch ends, and before
 * anything else is written or handed back, so the TUN sees the same order.  A write
 * the TUN refuses is handed back as the original segments (cut again, as
 * tun_frames cuts, with the IDs counted up from the first).
 */
static int
write_back_one(void *ctx, const unsigned char *dg, Py_ssize_t n)
{
    return hand_back((PyObject *)ctx, ITEM_WRITE, bytes_of(dg, n), NULL, NULL, 0);
}

static int
gro_flush(LoopObject *L, PyObject *items)
{
    if (L->glen == 0)
        return 0;
    unsigned char *h = L->gbuf, *p = L->gbuf + VNET_HDR;
    Py_ssize_t n = L->glen;
    int segs = L->gsegs;
    L->glen = 0;
    L->gsegs = 0;
    memset(h, 0, VNET_HDR);
    if (segs > 1) {
        int hl = HDR + (p[HDR + 12] >> 4) * 4;
        p[2] = (unsigned char)(n >> 8);
        p[3] = (unsigned char)n;
        ipv4_checksum(p);
        uint16_t c = fold(sum16(p + 12, 8, 6 + (uint64_t)(n - HDR))); /* the pseudo-header's sum, not complemented */
        p[HDR + 16] = (unsigned char)(c >> 8);
        p[HDR + 17] = (unsigned char)c;
        h[0] = VNET_NEEDS_CSUM;
        h[1] = VNET_GSO_TCPV4;
        h[2] = (unsigned char)hl;
        h[4] = (unsigned char)L->gmss;
        h[5] = (unsigned char)(L->gmss >> 8);
        h[6] = HDR;
        h[8] = 16;
    }
    if (write(L->tun, h, (size_t)(VNET_HDR + n)) == VNET_HDR + n) {
        if (count_add(L->io_counts, S_tun_write, segs) < 0)
            return -1;
        return segs > 1 && count_add(L->io_counts, S_tun_gro, 1) < 0 ? -1 : 0;
    }
    if (segs == 1)
        return hand_back(items, ITEM_WRITE, bytes_of(p, n), NULL, NULL, 0);
    return tun_frames(h, VNET_HDR + n, L->sbuf, write_back_one, items) < 0 ? -1 : 0;
}

/* Whether the TCP/IPv4 datagram in (len bytes, an IPv4 header of 20) may join a run:
   its payload length, or -1. */
static Py_ssize_t
gro_payload(const unsigned char *in, Py_ssize_t len)
{
    if (len < 40 || in[0] != 0x45 || in[9] != 6 || (in[6] & 0x3F) || in[7])
        return -1; /* not TCP, IPv4 options, or a fragment */
    Py_ssize_t thl = (in[HDR + 12] >> 4) * 4;
    int flags = in[HDR + 13];
    if (thl < 20 || HDR + thl > len || (flags != 0x10 && flags != 0x18))
        return -1;
    return len - HDR - thl;
}

/* Take in (an accepted datagram for the TUN) into the run being joined: 1 taken, 0
   not one to join (the caller writes it; what was joined before is written first),
   -1 error. */
static int
gro_add(LoopObject *L, const unsigned char *in, Py_ssize_t len, PyObject *items)
{
    Py_ssize_t plen = gro_payload(in, len);
    unsigned char *p = L->gbuf + VNET_HDR;
    if (L->glen && plen > 0 && plen <= L->gmss && L->glen + plen <= 65535 && get32(in + HDR + 4) == L->gnext
        && in[1] == p[1] && in[8] == p[8] && (in[6] & 0x40) == (p[6] & 0x40) && !memcmp(in + 12, p + 12, 8)
        && !memcmp(in + HDR, p + HDR, 4) && !memcmp(in + HDR + 8, p + HDR + 8, 5)
        && !memcmp(in + HDR + 14, p + HDR + 14, 2)
        && !memcmp(in + HDR + 20, p + HDR + 20, (size_t)((in[HDR + 12] >> 4) * 4 - 20))) {
        memcpy(p + L->glen, in + len - plen, (size_t)plen);
        L->glen += plen;
        L->gsegs++;
        L->gnext += (uint32_t)plen;
        if (in[HDR + 13] & 0x08 || plen < L->gmss) {
            p[HDR + 13] |= in[HDR + 13] & 0x08;
            return gro_flush(L, items) < 0 ? -1 : 1;
        }
        return 1;
    }
    if (gro_flush(L, items) < 0)
        return -1;
    if (plen <= 0 || in[HDR + 13] & 0x08)
        return 0;
    memcpy(p, in, (size_t)len);
    L->glen = len;
    L->gsegs = 1;
    L->gmss = (int)plen;
    L->gnext = get32(in + HDR + 4) + (uint32_t)plen;
    return 1;
}

/*
 * One datagram received on the ESP socket: 1 taken (written, dropped and counted,
 * or handed back opened), 0 not ours (nothing changed), -1 error (set).
 */
static int
loop_in(LoopObject *L, const unsigned char *dg, Py_ssize_t n, PyObject *items)
{
    if (L->stamp == NULL || n <= HDR + ESP_HDR + TAG_LEN || n & 3 || dg[0] != 0x45 || dg[9] != IPPROTO_ESP_
        || (dg[2] << 8 | dg[3]) != n)
        return 0;
    uint32_t seq = get32(dg + HDR + 4);
    EntryObject *e = lookup(L->in, PyLong_FromUnsignedLong(get32(dg + HDR)));
    if (e == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (memcmp(e->dst, dg + 16, 4) != 0)
        return 0;
    PyObject *replay = PyObject_GetAttr(e->state, S_replay);
    if (replay == NULL)
        return -1;
    uint64_t last = 0, bits = 0, size = 0, seq64 = seq;
    int r = 0;
    if (replay != Py_None) {
        if (attr_u64(replay, S_size, &size) < 0 || attr_u64(replay, S_last, &last) < 0)
            r = -1;
        else if (size > 64 || !((last & 0xFFFFFFFFULL) < seq && seq < (last & 0xFFFFFFFFULL) + 0x100000001ULL - size))
            r = 0; /* inside the window, another subspace, or a window wider than 64: Python's */
        else if (attr_u64(replay, S_bits, &bits) < 0)
            r = -1;
        else
            r = 1;
        if (r <= 0) {
            Py_DECREF(replay);
            return r;
        }
        seq64 = last - (last & 0xFFFFFFFFULL) + seq;
    }
    Py_ssize_t m = 0;
    unsigned char *o = L->obuf;
    int code = esp_open_into(e->esp, dg, n, (uint32_t)(seq64 >> 32), o, &m);
    if (code < 0) {
        Py_DECREF(replay);
        return -1;
    }
    if (replay != Py_None && code != OPEN_BADAUTH) {
        /* what ReplayWindow.advance does: the ICV passed */
        uint64_t shift = seq64 - last, mask = size == 64 ? UINT64_MAX : ((uint64_t)1 << size) - 1;
        bits = shift < size ? ((bits << shift) | 1) & mask : 1;
        if (set_u64(replay, S_bits, bits) < 0 || set_u64(replay, S_last, seq64) < 0
            || add_u64(replay, S_count, 1) < 0) {
            Py_DECREF(replay);
            return -1;
        }
    }
    Py_DECREF(replay);
    if (code != 0) {
        PyObject *name = code == OPEN_BADAUTH ? S_badauth : code == OPEN_BADILEN ? S_badilen
                         : code == OPEN_BADPAD                  ? S_badpad
                                                                : S_dummy;
        return count_add(L->esp_counts, name, 1) < 0 ? -1 : 1;
    }
    /* The decapsulation can change nothing (ip.decapsulate): an IPv4 inner datagram
       that fills the payload, the outer ECN Not-ECT or ECT(0), nothing more of ours
       inside.  Anything else is the Python path's (fasttunnel.finish). */
    const unsigned char *in = o + HDR;
    Py_ssize_t len = m - HDR;
    int simple = m >= 40 && o[9] == 4 && !(dg[1] & 1) && in[0] >> 4 == 4 && (in[0] & 0x0F) >= 5
                 && (in[2] << 8 | in[3]) == len && (in[0] & 0x0F) * 4 <= len;
    for (size_t i = 0; simple && i < sizeof MAYBE_MORE; i++)
        simple = in[9] != MAYBE_MORE[i];
    if (!simple)
        return hand_back(items, ITEM_OPENED, bytes_of(o, m), e->bound, bytes_of(dg, n), 1) < 0 ? -1 : 1;
    if (count_add(L->esp_counts, S_input, 1) < 0 || count_add(L->esp_counts, S_ibytes, n - HDR) < 0
        || add_u64(e->state, S_bytes, (uint64_t)len) < 0 || add_u64(e->state, S_packets, 1) < 0)
        return -1;
    L->fast_in++;
    unsigned char key[FLOW_KEY];
    flow_key(in, len, (in[0] & 0x0F) * 4, key);
    PyObject *k = bytes_of(key, FLOW_KEY);
    if (k == NULL)
        return -1;
    int allowed = PySet_Contains(L->allow, k);
    Py_DECREF(k);
    if (allowed < 0)
        return -1;
    if (!allowed)
        return hand_back(items, ITEM_ACCEPT, bytes_of(in, len), e->bound, bytes_of(dg, n), 1) < 0 ? -1 : 1;
    if (L->vnet) {
        int joined = gro_add(L, in, len, items);
        if (joined != 0)
            return joined < 0 ? -1 : 1;
    }
    static const unsigned char no_offload[VNET_HDR];
    struct iovec iov[2] = {{(void *)no_offload, VNET_HDR}, {(void *)in, (size_t)len}};
    ssize_t want = len + (L->vnet ? VNET_HDR : 0);
    if ((L->vnet ? writev(L->tun, iov, 2) : write(L->tun, in, (size_t)len)) == want)
        return count_add(L->io_counts, S_tun_write, 1) < 0 ? -1 : 1;
    return hand_back(items, ITEM_WRITE, bytes_of(in, len), NULL, NULL, 0) < 0 ? -1 : 1;
}

/* One batch of one descriptor: what loop_drain hands each datagram to (one_of). */
typedef struct {
    LoopObject *L;
    PyObject *items;
    int kind;   /* ITEM_TUN or ITEM_ESP: how an untouched datagram is handed back */
    int (*take)(LoopObject *, const unsigned char *, Py_ssize_t, PyObject *);
    int back;   /* something of this batch was handed back: hand back the rest too */
} Batch;

/* One datagram of a batch: taken, or handed back untouched (an emit_fn). */
static int
one_of(void *ctx, const unsigned char *dg, Py_ssize_t n)
{
    Batch *b = ctx;
    Py_ssize_t before = PyList_GET_SIZE(b->items);
    int took = b->back ? 0 : b->take(b->L, dg, n, b->items);
    if (took < 0)
        return -1;
    if (!took && hand_back(b->items, b->kind, bytes_of(dg, n), NULL, NULL, 0) < 0)
        return -1;
    b->back = b->back || PyList_GET_SIZE(b->items) != before;
    return 0;
}

/* Read up to LOOP_BATCH datagrams from fd, each through take() unless an earlier one
   was handed back (then it is handed back as kind too); a frame of an offloading TUN
   through tun_frames first.  The number read, or -1. */
static int
loop_drain(LoopObject *L, int fd, int kind, int (*take)(LoopObject *, const unsigned char *, Py_ssize_t, PyObject *),
           PyObject *items)
{
    Batch batch = {L, items, kind, take, 0};
    int got = 0;
    while (got < LOOP_BATCH) {
        /* a frame of an offloading TUN is a datagram of up to 65535 bytes behind its header */
        ssize_t r = kind == ITEM_TUN ? read(fd, L->buf, LOOP_BUF + VNET_HDR) : recv(fd, L->buf, LOOP_BUF, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (r == 0 && kind == ITEM_TUN)
            break; /* nothing (a TUN never reads an empty datagram) */
        got++;
        if (kind != ITEM_TUN || !L->vnet) {
            if (one_of(&batch, L->buf, r) < 0)
                return -1;
            continue;
        }
        Py_ssize_t k = tun_frames(L->buf, r, L->sbuf, one_of, &batch);
        if (k == -1 || (k > 1 && count_add(L->io_counts, S_tun_gso, 1) < 0)
            || (k == -2 && count_add(L->io_counts, S_tun_drop_offload, 1) < 0))
            return -1;
    }
    return got;
}

static void
loop_clear(LoopObject *L)
{
    PyDict_Clear(L->out);
    PyDict_Clear(L->in);
    PySet_Clear(L->allow);
    Py_CLEAR(L->stamp);
}

static int
loop_fd(PyObject *obj, int *fd)
{
    *fd = PyObject_AsFileDescriptor(obj);
    return *fd < 0 ? -1 : 0;
}

static void
Loop_dealloc(LoopObject *self)
{
    if (self->epfd >= 0)
        close(self->epfd);
    Py_XDECREF(self->out);
    Py_XDECREF(self->in);
    Py_XDECREF(self->allow);
    Py_XDECREF(self->esp_counts);
    Py_XDECREF(self->io_counts);
    Py_XDECREF(self->watched);
    Py_XDECREF(self->stamp);
    PyMem_Free(self->buf);
    PyMem_Free(self->obuf);
    PyMem_Free(self->sbuf);
    PyMem_Free(self->gbuf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
loop_register(LoopObject *L, int fd)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (epoll_ctl(L->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *
Loop_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"tun", "receiver", "sender", "esp_counts", "io_counts", "watched", "vnet", NULL};
    PyObject *tun, *rx, *tx, *esp_counts, *io_counts, *watched;
    int vnet = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO!O!O!|$p:Loop", kwlist, &tun, &rx, &tx, &PyDict_Type,
                                     &esp_counts, &PyDict_Type, &io_counts, &PyTuple_Type, &watched, &vnet))
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(watched); i++) {
        PyObject *w = PyTuple_GET_ITEM(watched, i);
        if (!PyTuple_Check(w) || PyTuple_GET_SIZE(w) != 2 || !PyUnicode_Check(PyTuple_GET_ITEM(w, 1))) {
            PyErr_SetString(PyExc_TypeError, "watched must be a tuple of (object, attribute name) pairs");
            return NULL;
        }
    }
    LoopObject *self = (LoopObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->epfd = -1;
    if (loop_fd(tun, &self->tun) < 0 || loop_fd(rx, &self->rx) < 0 || loop_fd(tx, &self->tx) < 0)
        goto fail;
    /* The loop drains each descriptor until EAGAIN with the GIL held: a blocking one
       would stop the daemon's packets, and its signals, for good. */
    int fds[3] = {self->tun, self->rx, self->tx};
    for (int i = 0; i < 3; i++) {
        int fl = fcntl(fds[i], F_GETFL);
        if (fl < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail;
        }
        if (!(fl & O_NONBLOCK)) {
            PyErr_SetString(PyExc_ValueError, "the loop's descriptors must be non-blocking");
            goto fail;
        }
    }
    self->out = PyDict_New();
    self->in = PyDict_New();
    self->allow = PySet_New(NULL);
    self->buf = PyMem_Malloc(LOOP_BUF + 64);
    self->obuf = PyMem_Malloc(LOOP_BUF + 64);
    self->sbuf = PyMem_Malloc(LOOP_BUF + 64);
    self->gbuf = PyMem_Malloc(LOOP_BUF + 64);
    self->vnet = vnet;
    if (self->out == NULL || self->in == NULL || self->allow == NULL || self->buf == NULL || self->obuf == NULL
        || self->sbuf == NULL || self->gbuf == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    Py_INCREF(esp_counts);
    self->esp_counts = esp_counts;
    Py_INCREF(io_counts);
    self->io_counts = io_counts;
    Py_INCREF(watched);
    self->watched = watched;
    self->rpos = sizeof self->rnd; /* drawn at the first packet */
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    if (loop_register(self, self->tun) < 0 || loop_register(self, self->rx) < 0)
        goto fail;
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

PyDoc_STRVAR(Loop_watch_doc, "watch(fd)\n\nHand back (FD, fd, None, None) whenever fd is readable.");

static PyObject *
Loop_watch(LoopObject *self, PyObject *obj)
{
    int fd;
    if (self->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "the loop is closed");
        return NULL;
    }
    if (loop_fd(obj, &fd) < 0 || loop_register(self, fd) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Loop_reset_doc,
             "reset(stamp)\n\n"
             "Forget every installed flow and SA; stamp is the tuple of the watched\n"
             "attributes' values now (the loop takes installations again, until one of\n"
             "them holds something else).");

static PyObject *
Loop_reset(LoopObject *self, PyObject *stamp)
{
    if (!PyTuple_Check(stamp) || PyTuple_GET_SIZE(stamp) != PyTuple_GET_SIZE(self->watched)) {
        PyErr_SetString(PyExc_ValueError, "the stamp is a tuple of one value per watched attribute");
        return NULL;
    }
    loop_clear(self);
    Py_INCREF(stamp);
    self->stamp = stamp;
    Py_RETURN_NONE;
}

/* A 4-byte address argument into out; -1 (error set) otherwise. */
static int
addr4(PyObject *obj, unsigned char out[4], const char *what)
{
    Bytes b;
    if (bytes_get(obj, &b, what) < 0)
        return -1;
    int ok = b.len == 4;
    if (ok)
        memcpy(out, b.buf, 4);
    else
        PyErr_Format(PyExc_ValueError, "%s must be 4 bytes, not %zd", what, b.len);
    bytes_release(&b);
    return ok ? 0 : -1;
}

static EntryObject *
entry_new(PyObject *esp, PyObject *state, PyObject *bound)
{
    if (!PyObject_TypeCheck(esp, &Esp_Type)) {
        PyErr_SetString(PyExc_TypeError, "esp must be an EspV4");
        return NULL;
    }
    EntryObject *e = PyObject_New(EntryObject, &Entry_Type);
    if (e == NULL)
        return NULL;
    Py_INCREF(esp);
    e->esp = (EspObject *)esp;
    Py_INCREF(state);
    e->state = state;
    Py_XINCREF(bound);
    e->bound = bound;
    e->ttl = e->dfbit = e->ecn = 0;
    e->wrap_mask = 0;
    return e;
}

/* Put e under key in table (a reference to e is taken over); True, or False when the
   loop is stale or the table full (nothing installed). */
static PyObject *
loop_install(LoopObject *self, PyObject *table, PyObject *key, EntryObject *e)
{
    int ok = self->stamp != NULL && PyDict_GET_SIZE(table) < LOOP_TABLE_MAX;
    if (ok && PyDict_SetItem(table, key, (PyObject *)e) < 0) {
        Py_DECREF(e);
        return NULL;
    }
    Py_DECREF(e);
    return PyBool_FromLong(ok);
}

PyDoc_STRVAR(Loop_add_out_doc,
             "add_out(key, esp, state, src, dst, ttl, dfbit, ecn, wrap_mask) -> bool\n\n"
             "Protect the outbound flow key (13 bytes) with the ESP tunnel SA whose EspV4 is\n"
             "esp and whose SaRuntime is state, between the IPv4 addresses src and dst, with\n"
             "the knobs ttl, dfbit and ecn; wrap_mask as esp's plan has it.  False when the\n"
             "loop is stale or full.");

static PyObject *
Loop_add_out(LoopObject *self, PyObject *args)
{
    PyObject *key, *esp, *state, *src, *dst, *mask_obj;
    int ttl, dfbit, ecn;
    uint64_t mask;
    if (!PyArg_ParseTuple(args, "O!OOOOiiiO:add_out", &PyBytes_Type, &key, &esp, &state, &src, &dst, &ttl, &dfbit,
                          &ecn, &mask_obj))
        return NULL;
    if (PyBytes_GET_SIZE(key) != FLOW_KEY) {
        PyErr_SetString(PyExc_ValueError, "a flow key is 13 bytes");
        return NULL;
    }
    if (get_u64(mask_obj, &mask, "wrap_mask") < 0)
        return NULL;
    EntryObject *e = entry_new(esp, state, NULL);
    if (e == NULL)
        return NULL;
    if (addr4(src, e->src, "src") < 0 || addr4(dst, e->dst, "dst") < 0) {
        Py_DECREF(e);
        return NULL;
    }
    e->ttl = ttl & 0xFF;
    e->dfbit = dfbit;
    e->ecn = ecn;
    e->wrap_mask = mask;
    return loop_install(self, self->out, key, e);
}

PyDoc_STRVAR(Loop_add_in_doc,
             "add_in(spi, esp, state, bound, dst) -> bool\n\n"
             "Open the ESP datagrams for SPI spi and the IPv4 destination dst with esp,\n"
             "state's replay window and counters; bound is handed back with what the\n"
             "Python side finishes.  False when the loop is stale or full.");

static PyObject *
Loop_add_in(LoopObject *self, PyObject *args)
{
    PyObject *spi, *esp, *state, *bound, *dst;
    uint64_t v;
    if (!PyArg_ParseTuple(args, "OOOOO:add_in", &spi, &esp, &state, &bound, &dst))
        return NULL;
    if (get_u64(spi, &v, "spi") < 0)
        return NULL;
    if (v > 0xFFFFFFFFULL) {
        PyErr_SetString(PyExc_ValueError, "the SPI is 32 bits");
        return NULL;
    }
    EntryObject *e = entry_new(esp, state, bound);
    if (e == NULL)
        return NULL;
    if (addr4(dst, e->dst, "dst") < 0) {
        Py_DECREF(e);
        return NULL;
    }
    PyObject *key = PyLong_FromUnsignedLongLong(v);
    if (key == NULL) {
        Py_DECREF(e);
        return NULL;
    }
    PyObject *r = loop_install(self, self->in, key, e);
    Py_DECREF(key);
    return r;
}

PyDoc_STRVAR(Loop_allow_in_doc,
             "allow_in(key) -> bool\n\n"
             "The inbound flow key (13 bytes) passes the inbound policy check when it\n"
             "arrived under ESP alone.  False when the loop is stale or full.");

static PyObject *
Loop_allow_in(LoopObject *self, PyObject *key)
{
    if (!PyBytes_Check(key) || PyBytes_GET_SIZE(key) != FLOW_KEY) {
        PyErr_SetString(PyExc_ValueError, "a flow key is 13 bytes");
        return NULL;
    }
    int ok = self->stamp != NULL && PySet_GET_SIZE(self->allow) < LOOP_TABLE_MAX;
    if (ok && PySet_Add(self->allow, key) < 0)
        return NULL;
    return PyBool_FromLong(ok);
}

PyDoc_STRVAR(Loop_wait_doc,
             "wait(timeout) -> list\n\n"
             "Wait at most timeout seconds (negative: for ever) for a descriptor, move what\n"
             "the installed flows and SAs take, and return the items handed back, in order.");

static PyObject *
Loop_wait(LoopObject *self, PyObject *arg)
{
    double timeout = PyFloat_AsDouble(arg);
    if (timeout == -1.0 && PyErr_Occurred())
        return NULL;
    if (self->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "the loop is closed");
        return NULL;
    }
    self->holding = 0; /* the Python side has finished what the last call handed back */
    int ms = timeout < 0 ? -1 : timeout > 86400.0 ? 86400000 : (int)(timeout * 1000.0 + 0.999);
    struct epoll_event ev[LOOP_EVENTS];
    int nev;
    Py_BEGIN_ALLOW_THREADS
    nev = epoll_wait(self->epfd, ev, LOOP_EVENTS, ms);
    Py_END_ALLOW_THREADS
    PyObject *items = PyList_New(0);
    if (items == NULL)
        return NULL;
    if (nev < 0) {
        if (errno == EINTR)
            return items;
        Py_DECREF(items);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    for (Py_ssize_t i = 0; nev > 0 && self->stamp != NULL && i < PyTuple_GET_SIZE(self->watched); i++) {
        PyObject *w = PyTuple_GET_ITEM(self->watched, i);
        PyObject *now = PyObject_GetAttr(PyTuple_GET_ITEM(w, 0), PyTuple_GET_ITEM(w, 1));
        int same = now == NULL ? -1 : PyObject_RichCompareBool(now, PyTuple_GET_ITEM(self->stamp, i), Py_EQ);
        Py_XDECREF(now);
        if (same < 0)
            goto fail;
        if (!same)
            loop_clear(self);
    }
    for (int i = 0; i < nev; i++) {
        int fd = ev[i].data.fd;
        if (fd == self->tun) {
            Py_ssize_t before = PyList_GET_SIZE(items);
            int got = loop_drain(self, fd, ITEM_TUN, loop_out, items);
            if (got < 0 || count_add(self->io_counts, S_tun_read, got) < 0)
                goto fail;
            self->holding = self->holding || PyList_GET_SIZE(items) != before;
        }
        else if (fd == self->rx) {
            int got = loop_drain(self, fd, ITEM_ESP, loop_in, items);
            if (gro_flush(self, items) < 0 || got < 0 || count_add(self->io_counts, S_esp_receive, got) < 0)
                goto fail;
        }
        else if (hand_back(items, ITEM_FD, PyLong_FromLong(fd), NULL, NULL, 0) < 0)
            goto fail;
    }
    return items;
fail:
    Py_DECREF(items);
    return NULL;
}

PyDoc_STRVAR(Loop_close_doc, "close()\n\nClose the epoll descriptor (the watched ones are the caller's).");

static PyObject *
Loop_close(LoopObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->epfd >= 0) {
        close(self->epfd);
        self->epfd = -1;
    }
    loop_clear(self);
    Py_RETURN_NONE;
}

static PyObject *
Loop_get_holding(LoopObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->holding);
}

static PyObject *
Loop_get_fast_out(LoopObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->fast_out);
}

static PyObject *
Loop_get_fast_in(LoopObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->fast_in);
}

static PyObject *
Loop_get_sizes(LoopObject *self, void *Py_UNUSED(closure))
{
    return Py_BuildValue("(nnn)", PyDict_GET_SIZE(self->out), PyDict_GET_SIZE(self->in), PySet_GET_SIZE(self->allow));
}

static PyObject *
Loop_get_stale(LoopObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->stamp == NULL);
}

static PyGetSetDef Loop_getset[] = {
    {"holding", (getter)Loop_get_holding, NULL, "Whether the last wait() handed back something read from the TUN.",
     NULL},
    {"fast_out", (getter)Loop_get_fast_out, NULL, "Datagrams protected here.", NULL},
    {"fast_in", (getter)Loop_get_fast_in, NULL, "Datagrams opened and decapsulated here.", NULL},
    {"sizes", (getter)Loop_get_sizes, NULL, "(outbound flows, SAs, inbound flows) installed.", NULL},
    {"stale", (getter)Loop_get_stale, NULL, "Whether the loop waits for reset().", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Loop_methods[] = {
    {"watch", (PyCFunction)Loop_watch, METH_O, Loop_watch_doc},
    {"reset", (PyCFunction)Loop_reset, METH_O, Loop_reset_doc},
    {"add_out", (PyCFunction)Loop_add_out, METH_VARARGS, Loop_add_out_doc},
    {"add_in", (PyCFunction)Loop_add_in, METH_VARARGS, Loop_add_in_doc},
    {"allow_in", (PyCFunction)Loop_allow_in, METH_O, Loop_allow_in_doc},
    {"wait", (PyCFunction)Loop_wait, METH_O, Loop_wait_doc},
    {"close", (PyCFunction)Loop_close, METH_NOARGS, Loop_close_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject Loop_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pfkeyd.packet.espfast.Loop",
    .tp_basicsize = sizeof(LoopObject),
    .tp_dealloc = (destructor)Loop_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = PyDoc_STR("Loop(tun, receiver, sender, esp_counts, io_counts, watched, *, vnet=False): the data "
                        "plane's packet loop "
                        "for installed ESP tunnel flows (see the comment above its code)."),
    .tp_methods = Loop_methods,
    .tp_getset = Loop_getset,
    .tp_new = Loop_new,
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
    int ok = ipv4_whole(d.buf, d.len);
    bytes_release(&d);
    return PyBool_FromLong(ok);
}

static int
append_one(void *ctx, const unsigned char *dg, Py_ssize_t n)
{
    PyObject *b = bytes_of(dg, n);
    if (b == NULL)
        return -1;
    int r = PyList_Append((PyObject *)ctx, b);
    Py_DECREF(b);
    return r;
}

PyDoc_STRVAR(tun_frames_doc,
             "tun_frames(frame) -> list[bytes] | None\n\n"
             "The datagrams a frame read from a TUN with offloads stands for (the\n"
             "virtio_net_hdr in front: a checksum completed, a TCP/IPv4 GSO segment cut\n"
             "into pieces), as the compiled loop makes them; None for a frame it cannot\n"
             "take.");

static PyObject *
espfast_tun_frames(PyObject *module, PyObject *arg)
{
    (void)module;
    Bytes d;
    if (bytes_get(arg, &d, "frame") < 0)
        return NULL;
    unsigned char *frame = PyMem_Malloc((size_t)d.len + 1), *seg = PyMem_Malloc(LOOP_BUF + 64);
    PyObject *out = PyList_New(0);
    Py_ssize_t k = -1;
    if (frame == NULL || seg == NULL || out == NULL)
        PyErr_NoMemory();
    else if (d.len > LOOP_BUF + VNET_HDR)
        PyErr_SetString(PyExc_ValueError, "a frame is at most 65546 bytes");
    else {
        memcpy(frame, d.buf, (size_t)d.len);
        k = tun_frames(frame, d.len, seg, append_one, out);
    }
    bytes_release(&d);
    PyMem_Free(frame);
    PyMem_Free(seg);
    if (k == -1) {
        Py_XDECREF(out);
        return NULL;
    }
    if (k == -2) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    return out;
}

static PyMethodDef module_methods[] = {
    {"ipv4_ok", (PyCFunction)espfast_ipv4_ok, METH_O, ipv4_ok_doc},
    {"tun_frames", (PyCFunction)espfast_tun_frames, METH_O, tun_frames_doc},
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
    if (PyType_Ready(&Aead_Type) < 0 || PyType_Ready(&Esp_Type) < 0 || PyType_Ready(&Entry_Type) < 0
        || PyType_Ready(&Loop_Type) < 0)
        return NULL;
    struct {
        PyObject **slot;
        const char *name;
    } names[] = {
        {&S_seq, "seq"},         {&S_iv_counter, "iv_counter"}, {&S_bytes, "bytes"},     {&S_packets, "packets"},
        {&S_replay, "replay"},   {&S_last, "last"},             {&S_bits, "bits"},       {&S_count, "count"},
        {&S_size, "size"},       {&S_output, "output"},         {&S_obytes, "obytes"},   {&S_input, "input"},
        {&S_ibytes, "ibytes"},   {&S_badauth, "badauth"},       {&S_badilen, "badilen"}, {&S_badpad, "badpad"},
        {&S_dummy, "dummy"},     {&S_tun_read, "tun.read"},     {&S_tun_write, "tun.write"},
        {&S_raw_send, "raw4.send"}, {&S_esp_receive, "raw4.50.receive"}, {&S_tun_gso, "tun.gso"},
        {&S_tun_drop_offload, "tun.drop.offload"}, {&S_tun_gro, "tun.gro"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (*names[i].slot == NULL && (*names[i].slot = PyUnicode_InternFromString(names[i].name)) == NULL)
            return NULL;
    PyObject *m = PyModule_Create(&espfast_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "AES_GCM", KIND_AES_GCM) < 0
        || PyModule_AddIntConstant(m, "CHACHA20_POLY1305", KIND_CHACHA20_POLY1305) < 0
        || PyModule_AddIntConstant(m, "OPEN_BADAUTH", OPEN_BADAUTH) < 0
        || PyModule_AddIntConstant(m, "OPEN_BADILEN", OPEN_BADILEN) < 0
        || PyModule_AddIntConstant(m, "OPEN_BADPAD", OPEN_BADPAD) < 0
        || PyModule_AddIntConstant(m, "OPEN_DUMMY", OPEN_DUMMY) < 0 || PyModule_AddIntConstant(m, "ITEM_FD", ITEM_FD) < 0
        || PyModule_AddIntConstant(m, "ITEM_TUN", ITEM_TUN) < 0 || PyModule_AddIntConstant(m, "ITEM_ESP", ITEM_ESP) < 0
        || PyModule_AddIntConstant(m, "ITEM_SEND", ITEM_SEND) < 0
        || PyModule_AddIntConstant(m, "ITEM_WRITE", ITEM_WRITE) < 0
        || PyModule_AddIntConstant(m, "ITEM_ACCEPT", ITEM_ACCEPT) < 0
        || PyModule_AddIntConstant(m, "ITEM_OPENED", ITEM_OPENED) < 0) {
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
    Py_INCREF(&Loop_Type);
    if (PyModule_AddObject(m, "Loop", (PyObject *)&Loop_Type) < 0) {
        Py_DECREF(&Loop_Type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
