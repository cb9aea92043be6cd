/* Messages: field tables in canonical order (ICD §4; FIELDS of node/link/messages.py). */
#include "umb_msg.h"

#include <string.h>

enum kind { K_UINT, K_FLOAT, K_BOOL, K_STR, K_FARR, K_IARR, K_HILNUM };

typedef struct {
    const char *name;
    uint8_t kind;
    uint8_t has_default;
    uint8_t allow_nan;  /* K_FLOAT, K_FARR */
    uint8_t min_len;    /* K_FARR: 1, or 0 where empty is allowed */
    uint16_t offset;
    double lo, hi;
    double def;         /* K_UINT / K_FLOAT default; arrays default to empty */
} field;

#define OFF(type, member) ((uint16_t)offsetof(umb_msg, u) + (uint16_t)offsetof(type, member))
#define U(t, m, lo, hi) {#m, K_UINT, 0, 0, 0, OFF(t, m), lo, hi, 0}
#define UD(t, m, lo, hi, d) {#m, K_UINT, 1, 0, 0, OFF(t, m), lo, hi, d}
#define F(t, m, lo, hi) {#m, K_FLOAT, 0, 0, 0, OFF(t, m), lo, hi, 0}
#define FN(t, m, lo, hi) {#m, K_FLOAT, 0, 1, 0, OFF(t, m), lo, hi, 0}
#define FD(t, m, lo, hi, d) {#m, K_FLOAT, 1, 0, 0, OFF(t, m), lo, hi, d}
#define S(t, m) {#m, K_STR, 0, 0, 0, OFF(t, m), 0, 0, 0}
#define B(t, m) {#m, K_BOOL, 0, 0, 0, OFF(t, m), 0, 0, 0}
#define FA(t, m, lo, hi, nan) {#m, K_FARR, 0, nan, 1, OFF(t, m), lo, hi, 0}
#define FAD(t, m, lo, hi) {#m, K_FARR, 1, 0, 0, OFF(t, m), lo, hi, 0}
#define IAD(t, m, lo, hi) {#m, K_IARR, 1, 0, 0, OFF(t, m), lo, hi, 0}
#define H(t, m) {#m, K_HILNUM, 0, 1, 1, OFF(t, m), -1e12, 1e12, 0}

#define U32MAX 4294967295.0
#define TEMP_LO -273.15
#define TEMP_HI 500.0

static const field f_hello[] = {
    S(umb_hello, node_id), UD(umb_hello, min_version, 0, 255, 1), UD(umb_hello, max_version, 0, 255, 1),
};
static const field f_hello_ack[] = {
    U(umb_hello_ack, version, 0, 255), UD(umb_hello_ack, min_version, 0, 255, 1),
    UD(umb_hello_ack, max_version, 0, 255, 1), S(umb_hello_ack, board_id), S(umb_hello_ack, fw_version),
    U(umb_hello_ack, gpu_count, 1, UMB_MAX_GPUS), F(umb_hello_ack, cap_min_w, 0, 5000),
    F(umb_hello_ack, cap_max_w, 0, 5000), F(umb_hello_ack, sensor_rate_hz, 0.01, 1000),
    F(umb_hello_ack, watchdog_s, 0.1, 3600), UD(umb_hello_ack, features, 0, U32MAX, 0),
};
static const field f_heartbeat[] = {F(umb_heartbeat, uptime_s, 0, 1e10)};
static const field f_step_done[] = {F(umb_step_done, t_board, 0, 1e10)};
static const field f_sensor[] = {
    F(umb_sensor, t_board, 0, 1e10), F(umb_sensor, utc, 0, 1e11),
    FA(umb_sensor, temp_c, TEMP_LO, TEMP_HI, 1), FA(umb_sensor, power_w, 0, 5000, 0),
    FA(umb_sensor, cap_w, 0, 5000, 0), FA(umb_sensor, progress, 0, 1e18, 0),
    U(umb_sensor, rails, 0, U32MAX), F(umb_sensor, solar_w, 0, 1e6), F(umb_sensor, battery_soc, 0, 1),
    FN(umb_sensor, radiator_c, TEMP_LO, TEMP_HI), UD(umb_sensor, flags, 0, U32MAX, 0),
    UD(umb_sensor, rx_errors, 0, U32MAX, 0), FD(umb_sensor, battery_wh, -1, 1e7, -1),
    FD(umb_sensor, battery_capacity_wh, -1, 1e7, -1), FD(umb_sensor, bus_v, -1, 1e4, -1),
    FD(umb_sensor, avionics_w, -1, 5000, -1), FD(umb_sensor, orbit_period_s, -1, 1e7, -1),
    FD(umb_sensor, eclipse_in_s, -1, 1e7, -1), FD(umb_sensor, sun_in_s, -1, 1e7, -1),
    IAD(umb_sensor, xid, 0, U32MAX), UD(umb_sensor, gpu_ok, 0, U32MAX, U32MAX),
    UD(umb_sensor, slowdown, 0, U32MAX, 0), FAD(umb_sensor, saved, 0, 1e18), UD(umb_sensor, ckpt, 0, U32MAX, 0),
};
static const field f_set_caps[] = {FA(umb_set_caps, cap_w, 0, 5000, 0)};
static const field f_set_rail[] = {U(umb_set_rail, gpu, 0, UMB_MAX_GPUS - 1), B(umb_set_rail, on)};
static const field f_checkpoint[] = {U(umb_checkpoint, gpu, 0, UMB_MAX_GPUS - 1), F(umb_checkpoint, pause_s, 0, 3600)};
static const field f_restore[] = {U(umb_restore, gpu, 0, UMB_MAX_GPUS - 1), F(umb_restore, progress, 0, 1e18)};
static const field f_ack[] = {U(umb_ack, ack_seq, 1, U32MAX), UD(umb_ack, status, 0, 255, 0)};
static const field f_hil_set[] = {S(umb_hil_set, name), H(umb_hil_set, value)};
static const field f_hil_get[] = {S(umb_hil_get, name)};
static const field f_hil_value[] = {S(umb_hil_value, name), H(umb_hil_value, value), UD(umb_hil_value, ref, 0, U32MAX, 0)};

typedef struct { uint8_t type; uint8_t reliable; uint8_t count; const field *fields; } type_spec;

#define T(code, rel, f) {code, rel, (uint8_t)(sizeof f / sizeof f[0]), f}
static const type_spec types[] = {
    T(UMB_HELLO, 0, f_hello), T(UMB_HELLO_ACK, 0, f_hello_ack), T(UMB_HEARTBEAT, 0, f_heartbeat),
    T(UMB_STEP_DONE, 0, f_step_done), T(UMB_SENSOR, 0, f_sensor), T(UMB_SET_CAPS, 1, f_set_caps),
    T(UMB_SET_RAIL, 1, f_set_rail), {UMB_RESET_BOARD, 1, 0, NULL}, T(UMB_CHECKPOINT, 1, f_checkpoint),
    T(UMB_RESTORE, 1, f_restore), T(UMB_ACK, 0, f_ack), T(UMB_HIL_SET, 1, f_hil_set),
    T(UMB_HIL_GET, 0, f_hil_get), T(UMB_HIL_VALUE, 0, f_hil_value),
};

static const type_spec *spec_of(unsigned type)
{
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (types[i].type == type) return &types[i];
    return NULL;
}

bool umb_type_known(unsigned type) { return spec_of(type) != NULL; }
bool umb_type_reliable(unsigned type)
{
    const type_spec *s = spec_of(type);
    return s != NULL && s->reliable;
}

const char *umb_reason_name(int reason)
{
    static const char *const names[] = {"", "oversize", "cobs", "decode", "crc", "version",
                                        "unknown_type", "invalid_value"};
    return reason >= 0 && reason <= UMB_R_INVALID_VALUE ? names[reason] : "?";
}

void umb_str_set(umb_str *dst, const char *s)
{
    size_t n = strlen(s);
    if (n > UMB_NAME_BYTES) n = UMB_NAME_BYTES;
    memcpy(dst->s, s, n);
    dst->s[n] = 0;
    dst->len = (uint8_t)n;
}

bool umb_str_eq(const umb_str *a, const char *s)
{
    return strlen(s) == a->len && memcmp(a->s, s, a->len) == 0;
}

void umb_msg_defaults(umb_msg *m, unsigned type)
{
    memset(m, 0, sizeof *m);
    m->type = (uint8_t)type;
    const type_spec *s = spec_of(type);
    if (s == NULL) return;
    for (unsigned i = 0; i < s->count; i++) {
        const field *f = &s->fields[i];
        void *at = (uint8_t *)m + f->offset;
        if (!f->has_default) continue;
        if (f->kind == K_UINT) *(uint32_t *)at = (uint32_t)f->def;
        else if (f->kind == K_FLOAT) *(double *)at = f->def;
    }
}

/* --- decoding ---------------------------------------------------------------------------- */

static bool is_int(const umb_mp_item *it) { return it->type == UMB_MP_UINT || it->type == UMB_MP_NINT; }

/* A float field: float 64, float 32 or any int (taken as that number). */
static bool as_float(const umb_mp_item *it, double *v)
{
    if (it->type == UMB_MP_F64 || it->type == UMB_MP_F32) *v = it->f;
    else if (it->type == UMB_MP_UINT) *v = (double)it->u;
    else if (it->type == UMB_MP_NINT) *v = (double)(int64_t)it->u;
    else return false;
    return true;
}

static bool float_ok(double v, double lo, double hi, bool nan)
{
    if (v != v) return nan;
    return lo <= v && v <= hi;
}

static bool read_float(umb_reader *r, double lo, double hi, bool nan, double *v)
{
    umb_mp_item it;
    return umb_mp_read(r, &it) && as_float(&it, v) && float_ok(*v, lo, hi, nan);
}

/* The value of one field; false: wrong type or out of range (invalid_value). */
static bool decode_field(const field *f, const uint8_t *at, const uint8_t *end, void *dst)
{
    umb_reader r = {at, end};
    umb_mp_item it;
    if (f->kind == K_FLOAT) return read_float(&r, f->lo, f->hi, f->allow_nan, (double *)dst);
    if (!umb_mp_read(&r, &it)) return false;
    switch (f->kind) {
    case K_UINT:
        if (it.type != UMB_MP_UINT || (double)it.u < f->lo || (double)it.u > f->hi) return false;
        *(uint32_t *)dst = (uint32_t)it.u;
        return true;
    case K_BOOL:
        if (it.type != UMB_MP_BOOL) return false;
        *(bool *)dst = it.b;
        return true;
    case K_STR: {
        uint32_t points;
        bool ok;
        if (it.type != UMB_MP_STR || !umb_utf8(it.ptr, it.n, &points, &ok)) return false;
        if (!ok || points < 1 || points > UMB_MAX_NAME || it.n > UMB_NAME_BYTES) return false;
        umb_str *s = dst;
        memcpy(s->s, it.ptr, it.n);
        s->s[it.n] = 0;
        s->len = (uint8_t)it.n;
        return true;
    }
    case K_FARR: {
        umb_farr *a = dst;
        if (it.type != UMB_MP_ARRAY || it.n < f->min_len || it.n > UMB_MAX_GPUS) return false;
        a->n = (uint8_t)it.n;
        for (uint32_t i = 0; i < it.n; i++) {
            double v;
            if (!read_float(&r, f->lo, f->hi, f->allow_nan, &v)) return false;
            if (i < UMB_ARRAY_CAP) a->v[i] = v;
        }
        return true;
    }
    case K_IARR: {
        umb_iarr *a = dst;
        if (it.type != UMB_MP_ARRAY || it.n > UMB_MAX_GPUS) return false;
        a->n = (uint8_t)it.n;
        for (uint32_t i = 0; i < it.n; i++) {
            umb_mp_item x;
            if (!umb_mp_read(&r, &x) || x.type != UMB_MP_UINT || (double)x.u > f->hi) return false;
            if (i < UMB_ARRAY_CAP) a->v[i] = (uint32_t)x.u;
        }
        return true;
    }
    case K_HILNUM: {
        umb_hilnum *h = dst;
        double v;
        if (as_float(&it, &v)) {
            h->is_array = false;
            h->n = 1;
            h->v[0] = v;
            return float_ok(v, f->lo, f->hi, true);
        }
        if (it.type != UMB_MP_ARRAY || it.n < 1 || it.n > UMB_MAX_GPUS) return false;
        h->is_array = true;
        h->n = (uint8_t)it.n;
        for (uint32_t i = 0; i < it.n; i++) {
            double x;
            if (!read_float(&r, f->lo, f->hi, true, &x)) return false;
            if (i < UMB_ARRAY_CAP) h->v[i] = x;
        }
        return true;
    }
    default:
        return false;
    }
}

static bool consistent(const umb_msg *m)
{
    switch (m->type) {
    case UMB_HELLO:
        return m->u.hello.min_version >= 1 && m->u.hello.min_version <= m->u.hello.max_version;
    case UMB_HELLO_ACK:
        return m->u.hello_ack.cap_min_w <= m->u.hello_ack.cap_max_w;
    case UMB_SENSOR: {
        const umb_sensor *s = &m->u.sensor;
        unsigned n = s->temp_c.n;
        return s->power_w.n == n && s->cap_w.n == n && s->progress.n == n
               && (s->xid.n == 0 || s->xid.n == n) && (s->saved.n == 0 || s->saved.n == n);
    }
    default:
        return true;
    }
}

int umb_decode_body(const uint8_t *body, size_t n, umb_msg *out)
{
    if (!umb_mp_validate(body, n)) return UMB_R_DECODE;                       /* step 6 */
    umb_reader r = {body, body + n};
    umb_mp_item env, head[3], pay;
    if (!umb_mp_read(&r, &env) || env.type != UMB_MP_ARRAY || env.n != 4) return UMB_R_DECODE;
    for (int i = 0; i < 3; i++) {                                              /* step 7 */
        if (!umb_mp_read(&r, &head[i])) return UMB_R_DECODE;
        if (!is_int(&head[i])) return UMB_R_DECODE;
    }
    if (head[0].type != UMB_MP_UINT || head[0].u != UMB_PROTOCOL_VERSION) return UMB_R_VERSION;
    if (head[2].type != UMB_MP_UINT || head[2].u > UMB_UINT32_MAX) return UMB_R_DECODE;
    const type_spec *spec = head[1].type == UMB_MP_UINT && head[1].u <= 0xff ? spec_of((unsigned)head[1].u) : NULL;
    if (spec == NULL) return UMB_R_UNKNOWN_TYPE;                                /* step 10 */
    const uint8_t *pay_at = r.p;
    if (!umb_mp_read(&r, &pay) || pay.type != UMB_MP_MAP) return UMB_R_DECODE; /* step 11 */
    (void)pay_at;

    /* Where each field's value starts (the last one wins for a key given twice). */
    const uint8_t *where[sizeof f_sensor / sizeof f_sensor[0]] = {0};
    for (uint32_t i = 0; i < pay.n; i++) {
        umb_mp_item key;
        if (!umb_mp_read(&r, &key)) return UMB_R_DECODE;
        int hit = -1;
        if (key.type == UMB_MP_STR) {
            for (unsigned k = 0; k < spec->count; k++) {
                const char *name = spec->fields[k].name;
                if (strlen(name) == key.n && memcmp(name, key.ptr, key.n) == 0) { hit = (int)k; break; }
            }
        }
        if (hit >= 0) where[hit] = r.p;
        if (!umb_mp_skip(&r)) return UMB_R_DECODE;
    }
    umb_msg_defaults(out, spec->type);
    out->seq = (uint32_t)head[2].u;
    for (unsigned k = 0; k < spec->count; k++)                                 /* step 12 */
        if (where[k] == NULL && !spec->fields[k].has_default) return UMB_R_DECODE;
    for (unsigned k = 0; k < spec->count; k++) {                               /* step 13 */
        if (where[k] == NULL) continue;
        const field *f = &spec->fields[k];
        if (!decode_field(f, where[k], body + n, (uint8_t *)out + f->offset)) return UMB_R_INVALID_VALUE;
    }
    return consistent(out) ? UMB_R_NONE : UMB_R_INVALID_VALUE;
}

/* --- encoding ---------------------------------------------------------------------------- */

size_t umb_encode_body(const umb_msg *m, uint8_t *buf, size_t cap)
{
    const type_spec *spec = spec_of(m->type);
    if (spec == NULL) return 0;
    umb_writer w = {buf, cap, 0, false};
    umb_mp_array(&w, 4);
    umb_mp_uint(&w, UMB_PROTOCOL_VERSION);
    umb_mp_uint(&w, m->type);
    umb_mp_uint(&w, m->seq);
    umb_mp_map(&w, spec->count);
    for (unsigned k = 0; k < spec->count; k++) {
        const field *f = &spec->fields[k];
        const void *at = (const uint8_t *)m + f->offset;
        umb_mp_str(&w, f->name, strlen(f->name));
        switch (f->kind) {
        case K_UINT: umb_mp_uint(&w, *(const uint32_t *)at); break;
        case K_FLOAT: umb_mp_f64(&w, *(const double *)at); break;
        case K_BOOL: umb_mp_bool(&w, *(const bool *)at); break;
        case K_STR: {
            const umb_str *s = at;
            umb_mp_str(&w, s->s, s->len);
            break;
        }
        case K_FARR: {
            const umb_farr *a = at;
            unsigned kept = a->n < UMB_ARRAY_CAP ? a->n : UMB_ARRAY_CAP;
            umb_mp_array(&w, kept);
            for (unsigned i = 0; i < kept; i++) umb_mp_f64(&w, a->v[i]);
            break;
        }
        case K_IARR: {
            const umb_iarr *a = at;
            unsigned kept = a->n < UMB_ARRAY_CAP ? a->n : UMB_ARRAY_CAP;
            umb_mp_array(&w, kept);
            for (unsigned i = 0; i < kept; i++) umb_mp_uint(&w, a->v[i]);
            break;
        }
        case K_HILNUM: {
            const umb_hilnum *h = at;
            if (h->is_array) {
                unsigned kept = h->n < UMB_ARRAY_CAP ? h->n : UMB_ARRAY_CAP;
                umb_mp_array(&w, kept);
                for (unsigned i = 0; i < kept; i++) umb_mp_f64(&w, h->v[i]);
            } else {
                umb_mp_f64(&w, h->v[0]);
            }
            break;
        }
        default: break;
        }
    }
    return w.overflow ? 0 : w.len;
}

/* --- the stream decoder ------------------------------------------------------------------ */

void umb_rx_reset(umb_rx *rx)
{
    rx->enc_len = 0;
    rx->dec_len = 0;
    rx->block_left = 0;
    rx->zero_due = false;
    rx->in_oversize = false;
    memset(&rx->stats, 0, sizeof rx->stats);
    rx->last_reason = UMB_R_NONE;
}

static void store(umb_rx *rx, uint8_t b)
{
    if (rx->dec_len < sizeof rx->buf) rx->buf[rx->dec_len] = b;
    rx->dec_len++;
}

static int frame_end(umb_rx *rx, umb_msg *out)
{
    if (rx->in_oversize) return UMB_R_OVERSIZE;                     /* the run, counted once */
    if (rx->block_left != 0) return UMB_R_COBS;                      /* step 2 */
    if (rx->dec_len < 5) return UMB_R_DECODE;                        /* step 3 */
    size_t body = rx->dec_len - 4u;
    if (body > UMB_MAX_BODY) return UMB_R_OVERSIZE;                  /* step 4 */
    const uint8_t *t = rx->buf + body;
    uint32_t want = (uint32_t)t[0] | (uint32_t)t[1] << 8 | (uint32_t)t[2] << 16 | (uint32_t)t[3] << 24;
    if (umb_crc32(0, rx->buf, body) != want) return UMB_R_CRC;       /* step 5 */
    return umb_decode_body(rx->buf, body, out);                      /* steps 6-13 */
}

bool umb_rx_byte(umb_rx *rx, uint8_t b, umb_msg *out)
{
    if (b != 0) {
        rx->enc_len++;
        if (rx->in_oversize) return false;
        if (rx->enc_len > UMB_MAX_ENCODED) { /* step 1, as the bytes arrive */
            rx->in_oversize = true;
            return false;
        }
        if (rx->block_left == 0) { /* a code byte */
            if (rx->zero_due) store(rx, 0);
            rx->block_left = (uint8_t)(b - 1u);
            rx->zero_due = b < 0xffu;
        } else {
            store(rx, b);
            rx->block_left--;
        }
        return false;
    }
    if (rx->enc_len == 0) return false; /* padding */
    int reason = frame_end(rx, out);
    umb_rx_stats *s = &rx->stats;
    if (reason == UMB_R_NONE) s->frames++;
    else {
        s->bytes_dropped += rx->enc_len + 1u;
        if (reason == UMB_R_CRC) s->crc_errors++;
        else if (reason == UMB_R_OVERSIZE) s->oversize++;
        else s->decode_errors++;
        rx->last_reason = reason;
    }
    rx->enc_len = 0;
    rx->dec_len = 0;
    rx->block_left = 0;
    rx->zero_due = false;
    rx->in_oversize = false;
    return reason == UMB_R_NONE;
}

int umb_decode_frame(const uint8_t *encoded, size_t n, umb_msg *out)
{
    static umb_rx rx;
    umb_rx_reset(&rx);
    if (n == 0) return UMB_R_DECODE;
    for (size_t i = 0; i < n; i++) {
        if (encoded[i] == 0) return UMB_R_COBS; /* a zero inside an encoded frame */
        umb_rx_byte(&rx, encoded[i], out);
    }
    return umb_rx_byte(&rx, 0, out) ? UMB_R_NONE : rx.last_reason;
}
