/* The wire layer: CRC-32 (ICD §2.4), COBS (§2.5), msgpack (§1.3). */
#include "umb_wire.h"

#include <string.h>

/* CRC-32/ISO-HDLC, a nibble at a time: a 64-byte table instead of 1 KiB of flash. */
static const uint32_t crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
    0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
    0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu,
};

uint32_t umb_crc32(uint32_t crc, const uint8_t *data, size_t n)
{
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= data[i];
        crc = (crc >> 4) ^ crc_nibble[crc & 0x0Fu];
        crc = (crc >> 4) ^ crc_nibble[crc & 0x0Fu];
    }
    return ~crc;
}

/* --- msgpack reading -------------------------------------------------------------------- */

static uint64_t be(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

static double f64_from_bits(uint64_t bits)
{
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

static double f32_from_bits(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return (double)f;
}

bool umb_mp_read(umb_reader *r, umb_mp_item *it)
{
    const uint8_t *p = r->p;
    if (p >= r->end) return false;
    size_t left = (size_t)(r->end - p) - 1;
    uint8_t c = *p++;
    unsigned extra = 0;  /* header bytes after the type byte */
    uint32_t payload = 0; /* STR/BIN/EXT bytes after the header */
    memset(it, 0, sizeof *it);
    if (c <= 0x7f) { it->type = UMB_MP_UINT; it->u = c; }
    else if (c >= 0xe0) { it->type = UMB_MP_NINT; it->u = (uint64_t)(int64_t)(int8_t)c; }
    else if (c <= 0x8f) { it->type = UMB_MP_MAP; it->n = c & 0x0fu; }
    else if (c <= 0x9f) { it->type = UMB_MP_ARRAY; it->n = c & 0x0fu; }
    else if (c <= 0xbf) { it->type = UMB_MP_STR; payload = c & 0x1fu; }
    else {
        switch (c) {
        case 0xc0: it->type = UMB_MP_NIL; break;
        case 0xc2: case 0xc3: it->type = UMB_MP_BOOL; it->b = c == 0xc3; break;
        case 0xc4: case 0xc5: case 0xc6:
        case 0xd9: case 0xda: case 0xdb: {
            extra = (c == 0xc4 || c == 0xd9) ? 1u : (c == 0xc5 || c == 0xda) ? 2u : 4u;
            if (left < extra) return false;
            payload = (uint32_t)be(p, extra);
            it->type = c <= 0xc6 ? UMB_MP_BIN : UMB_MP_STR;
            break;
        }
        case 0xc7: case 0xc8: case 0xc9:
            extra = c == 0xc7 ? 1u : c == 0xc8 ? 2u : 4u;
            if (left < extra + 1u) return false;
            payload = (uint32_t)be(p, extra);
            it->ext_type = (int8_t)p[extra];
            extra += 1u;
            it->type = UMB_MP_EXT;
            break;
        case 0xca:
            extra = 4; if (left < extra) return false;
            it->type = UMB_MP_F32; it->f = f32_from_bits((uint32_t)be(p, 4)); break;
        case 0xcb:
            extra = 8; if (left < extra) return false;
            it->type = UMB_MP_F64; it->f = f64_from_bits(be(p, 8)); break;
        case 0xcc: case 0xcd: case 0xce: case 0xcf:
            extra = 1u << (c - 0xcc); if (left < extra) return false;
            it->type = UMB_MP_UINT; it->u = be(p, extra); break;
        case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
            extra = 1u << (c - 0xd0); if (left < extra) return false;
            uint64_t raw = be(p, extra);
            unsigned bits = extra * 8u;
            int64_t v = bits == 64 ? (int64_t)raw
                                   : (int64_t)(raw ^ (1ull << (bits - 1))) - (int64_t)(1ull << (bits - 1));
            if (v >= 0) { it->type = UMB_MP_UINT; it->u = (uint64_t)v; }
            else { it->type = UMB_MP_NINT; it->u = (uint64_t)v; }
            break;
        }
        case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
            extra = 1; if (left < extra) return false;
            payload = 1u << (c - 0xd4);
            it->ext_type = (int8_t)p[0];
            it->type = UMB_MP_EXT;
            break;
        case 0xdc: case 0xdd:
            extra = c == 0xdc ? 2u : 4u; if (left < extra) return false;
            it->type = UMB_MP_ARRAY; it->n = (uint32_t)be(p, extra); break;
        case 0xde: case 0xdf:
            extra = c == 0xde ? 2u : 4u; if (left < extra) return false;
            it->type = UMB_MP_MAP; it->n = (uint32_t)be(p, extra); break;
        default: return false; /* 0xc1: never used */
        }
    }
    p += extra;
    left -= extra;
    if (it->type == UMB_MP_STR || it->type == UMB_MP_BIN || it->type == UMB_MP_EXT) {
        if (left < payload) return false;
        it->n = payload;
        it->ptr = p;
        p += payload;
    }
    r->p = p;
    return true;
}

bool umb_mp_skip(umb_reader *r)
{
    uint64_t pending = 1;
    while (pending) {
        umb_mp_item it;
        if (!umb_mp_read(r, &it)) return false;
        pending--;
        if (it.type == UMB_MP_ARRAY) pending += it.n;
        else if (it.type == UMB_MP_MAP) pending += 2ull * it.n;
    }
    return true;
}

/* Printable as Python's str.isprintable(), except for unassigned code points (Cn), which a
 * firmware without the Unicode database accepts. */
static bool printable(uint32_t c)
{
    if (c < 0x20u || (c >= 0x7fu && c <= 0xa0u) || c == 0xadu) return false;
    if (c < 0x0600u) return true;
    static const uint32_t ranges[][2] = {
        {0x0600, 0x0605}, {0x061c, 0x061c}, {0x06dd, 0x06dd}, {0x070f, 0x070f},
        {0x0890, 0x0891}, {0x08e2, 0x08e2}, {0x1680, 0x1680}, {0x180e, 0x180e},
        {0x2000, 0x200f}, {0x2028, 0x202f}, {0x205f, 0x2064}, {0x2066, 0x206f},
        {0x3000, 0x3000}, {0xd800, 0xf8ff}, {0xfeff, 0xfeff}, {0xfff9, 0xfffb},
        {0x110bd, 0x110bd}, {0x110cd, 0x110cd}, {0x13430, 0x1343f}, {0x1bca0, 0x1bca3},
        {0x1d173, 0x1d17a}, {0xe0001, 0xe0001}, {0xe0020, 0xe007f}, {0xf0000, 0x10ffff},
    };
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++)
        if (c >= ranges[i][0] && c <= ranges[i][1]) return false;
    return true;
}

bool umb_utf8(const uint8_t *s, size_t n, uint32_t *points, bool *all_printable)
{
    uint32_t count = 0;
    bool ok = true;
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        uint32_t cp;
        unsigned more;
        if (c < 0x80u) { cp = c; more = 0; }
        else if (c >= 0xc2u && c <= 0xdfu) { cp = c & 0x1fu; more = 1; }
        else if (c >= 0xe0u && c <= 0xefu) { cp = c & 0x0fu; more = 2; }
        else if (c >= 0xf0u && c <= 0xf4u) { cp = c & 0x07u; more = 3; }
        else return false;
        if (n - i - 1 < more) return false;
        for (unsigned k = 1; k <= more; k++) {
            uint8_t d = s[i + k];
            if ((d & 0xc0u) != 0x80u) return false;
            cp = (cp << 6) | (d & 0x3fu);
        }
        /* overlong forms, surrogates, beyond U+10FFFF */
        if ((more == 2 && cp < 0x800u) || (more == 3 && (cp < 0x10000u || cp > 0x10ffffu))
            || (cp >= 0xd800u && cp <= 0xdfffu))
            return false;
        if (!printable(cp)) ok = false;
        count++;
        i += 1u + more;
    }
    if (points) *points = count;
    if (all_printable) *all_printable = ok;
    return true;
}

bool umb_mp_validate(const uint8_t *p, size_t n)
{
    umb_reader r = {p, p + n};
    /* Items left at each open level; for maps counted in keys and values, a key when even. */
    uint64_t left[UMB_MAX_DEPTH + 1];
    bool is_map[UMB_MAX_DEPTH + 1];
    unsigned depth = 0;
    left[0] = 1;
    is_map[0] = false;
    while (true) {
        while (depth > 0 && left[depth] == 0) depth--;
        if (depth == 0 && left[0] == 0) break;
        bool key = is_map[depth] && (left[depth] % 2u == 0);
        left[depth]--;
        umb_mp_item it;
        if (!umb_mp_read(&r, &it)) return false;
        if (key && it.type != UMB_MP_STR && it.type != UMB_MP_BIN) return false;
        if (it.type == UMB_MP_STR && !umb_utf8(it.ptr, it.n, NULL, NULL)) return false;
        if (it.type == UMB_MP_EXT && it.ext_type == -1 && it.n != 4 && it.n != 8 && it.n != 12)
            return false; /* a timestamp of another size is malformed */
        if ((it.type == UMB_MP_ARRAY || it.type == UMB_MP_MAP) && it.n > 0) {
            if (depth == UMB_MAX_DEPTH) return false;
            depth++;
            left[depth] = it.type == UMB_MP_MAP ? 2ull * it.n : it.n;
            is_map[depth] = it.type == UMB_MP_MAP;
        }
    }
    return r.p == r.end;
}

/* --- msgpack writing -------------------------------------------------------------------- */

static void put(umb_writer *w, const uint8_t *data, size_t n)
{
    if (w->overflow || w->cap - w->len < n) {
        w->overflow = true;
        return;
    }
    memcpy(w->buf + w->len, data, n);
    w->len += n;
}

static void put_be(umb_writer *w, uint8_t tag, uint64_t v, unsigned bytes)
{
    uint8_t b[9];
    b[0] = tag;
    for (unsigned i = 0; i < bytes; i++) b[1 + i] = (uint8_t)(v >> (8u * (bytes - 1u - i)));
    put(w, b, 1u + bytes);
}

void umb_mp_uint(umb_writer *w, uint64_t v)
{
    if (v <= 0x7fu) { uint8_t b = (uint8_t)v; put(w, &b, 1); }
    else if (v <= 0xffu) put_be(w, 0xcc, v, 1);
    else if (v <= 0xffffu) put_be(w, 0xcd, v, 2);
    else if (v <= 0xffffffffu) put_be(w, 0xce, v, 4);
    else put_be(w, 0xcf, v, 8);
}

void umb_mp_f64(umb_writer *w, double v)
{
    uint64_t bits;
    if (v != v) bits = 0x7ff8000000000000ull; /* the quiet NaN of ICD §1.3 */
    else memcpy(&bits, &v, sizeof bits);
    put_be(w, 0xcb, bits, 8);
}

void umb_mp_bool(umb_writer *w, bool v)
{
    uint8_t b = v ? 0xc3 : 0xc2;
    put(w, &b, 1);
}

void umb_mp_str(umb_writer *w, const char *s, size_t n)
{
    if (n <= 31u) { uint8_t b = (uint8_t)(0xa0u | n); put(w, &b, 1); }
    else if (n <= 0xffu) put_be(w, 0xd9, n, 1);
    else if (n <= 0xffffu) put_be(w, 0xda, n, 2);
    else put_be(w, 0xdb, n, 4);
    put(w, (const uint8_t *)s, n);
}

static void container(umb_writer *w, uint32_t n, uint8_t fix, uint8_t tag16)
{
    if (n <= 15u) { uint8_t b = (uint8_t)(fix | n); put(w, &b, 1); }
    else if (n <= 0xffffu) put_be(w, tag16, n, 2);
    else put_be(w, (uint8_t)(tag16 + 1u), n, 4);
}

void umb_mp_array(umb_writer *w, uint32_t n) { container(w, n, 0x90, 0xdc); }
void umb_mp_map(umb_writer *w, uint32_t n) { container(w, n, 0x80, 0xde); }

/* --- frames ----------------------------------------------------------------------------- */

void umb_frame_write(const uint8_t *body, size_t n, umb_put_fn out, void *ctx)
{
    uint32_t crc = umb_crc32(0, body, n);
    const uint8_t trailer[4] = {(uint8_t)crc, (uint8_t)(crc >> 8), (uint8_t)(crc >> 16), (uint8_t)(crc >> 24)};
    size_t total = n + 4u;
#define AT(i) ((i) < n ? body[(i)] : trailer[(i) - n])
    uint8_t block[255];
    size_t i = 0;
    /* As the Python cobs package: a block per zero; a full block (255) implies no zero,
     * and the data ending exactly at a full block gets no empty trailing block. */
    while (true) {
        size_t len = 0;
        while (i < total && len < 254u && AT(i) != 0) { block[1 + len++] = AT(i); i++; }
        if (len == 254u) {
            block[0] = 0xff;
            out(ctx, block, 255);
            if (i == total) break;
            continue;
        }
        block[0] = (uint8_t)(len + 1u);
        out(ctx, block, len + 1u);
        if (i == total) break;
        i++; /* the zero this block stands for */
        if (i == total) { /* data ended with a zero: an empty last block */
            block[0] = 0x01;
            out(ctx, block, 1);
            break;
        }
    }
#undef AT
    const uint8_t zero = 0;
    out(ctx, &zero, 1);
}
