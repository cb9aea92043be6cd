/* Host-only helpers for the codec tests (tests/test_firmware_codec.py, through ctypes):
 * a decoded message as JSON, a decoded frame re-encoded, a stream decoded in chunks. */
#include <stdio.h>
#include <string.h>

#include "umb_msg.h"

typedef struct { char *buf; size_t cap, len; } sink;

static void out(sink *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#include <stdarg.h>
static void out(sink *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(s->buf + s->len, s->len < s->cap ? s->cap - s->len : 0, fmt, ap);
    va_end(ap);
    if (n > 0) s->len += (size_t)n;
}

static void num(sink *s, double v)
{
    if (v != v) out(s, "\"NaN\"");
    else if (v > 1.7976931348623157e308) out(s, "Infinity");
    else if (v < -1.7976931348623157e308) out(s, "-Infinity");
    else out(s, "%.17g", v);
}

static void str(sink *s, const umb_str *x)
{
    out(s, "\"");
    for (unsigned i = 0; i < x->len; i++) {
        unsigned char c = (unsigned char)x->s[i];
        if (c == '"' || c == '\\') out(s, "\\%c", c);
        else if (c < 0x20) out(s, "\\u%04x", c);
        else out(s, "%c", c);
    }
    out(s, "\"");
}

static void farr(sink *s, const umb_farr *a)
{
    out(s, "[");
    for (unsigned i = 0; i < a->n; i++) { if (i) out(s, ","); num(s, a->v[i]); }
    out(s, "]");
}

static void hilnum(sink *s, const umb_hilnum *h)
{
    if (!h->is_array) { num(s, h->v[0]); return; }
    out(s, "[");
    for (unsigned i = 0; i < h->n; i++) { if (i) out(s, ","); num(s, h->v[i]); }
    out(s, "]");
}

static void message_json(sink *s, const umb_msg *m)
{
    out(s, "{\"type\":%u,\"seq\":%u,\"message\":{", m->type, (unsigned)m->seq);
    switch (m->type) {
    case UMB_HELLO: {
        const umb_hello *h = &m->u.hello;
        out(s, "\"node_id\":"); str(s, &h->node_id);
        out(s, ",\"min_version\":%u,\"max_version\":%u", h->min_version, h->max_version);
        break;
    }
    case UMB_HELLO_ACK: {
        const umb_hello_ack *h = &m->u.hello_ack;
        out(s, "\"version\":%u,\"min_version\":%u,\"max_version\":%u,\"board_id\":", h->version, h->min_version, h->max_version);
        str(s, &h->board_id); out(s, ",\"fw_version\":"); str(s, &h->fw_version);
        out(s, ",\"gpu_count\":%u,\"cap_min_w\":", h->gpu_count); num(s, h->cap_min_w);
        out(s, ",\"cap_max_w\":"); num(s, h->cap_max_w);
        out(s, ",\"sensor_rate_hz\":"); num(s, h->sensor_rate_hz);
        out(s, ",\"watchdog_s\":"); num(s, h->watchdog_s);
        out(s, ",\"features\":%u", h->features);
        break;
    }
    case UMB_HEARTBEAT: out(s, "\"uptime_s\":"); num(s, m->u.heartbeat.uptime_s); break;
    case UMB_STEP_DONE: out(s, "\"t_board\":"); num(s, m->u.step_done.t_board); break;
    case UMB_SENSOR: {
        const umb_sensor *x = &m->u.sensor;
        out(s, "\"t_board\":"); num(s, x->t_board); out(s, ",\"utc\":"); num(s, x->utc);
        out(s, ",\"temp_c\":"); farr(s, &x->temp_c); out(s, ",\"power_w\":"); farr(s, &x->power_w);
        out(s, ",\"cap_w\":"); farr(s, &x->cap_w); out(s, ",\"progress\":"); farr(s, &x->progress);
        out(s, ",\"rails\":%u,\"solar_w\":", x->rails); num(s, x->solar_w);
        out(s, ",\"battery_soc\":"); num(s, x->battery_soc); out(s, ",\"radiator_c\":"); num(s, x->radiator_c);
        out(s, ",\"flags\":%u,\"rx_errors\":%u,\"battery_wh\":", x->flags, x->rx_errors); num(s, x->battery_wh);
        out(s, ",\"battery_capacity_wh\":"); num(s, x->battery_capacity_wh);
        out(s, ",\"bus_v\":"); num(s, x->bus_v); out(s, ",\"avionics_w\":"); num(s, x->avionics_w);
        out(s, ",\"orbit_period_s\":"); num(s, x->orbit_period_s);
        out(s, ",\"eclipse_in_s\":"); num(s, x->eclipse_in_s); out(s, ",\"sun_in_s\":"); num(s, x->sun_in_s);
        out(s, ",\"xid\":[");
        for (unsigned i = 0; i < x->xid.n; i++) out(s, i ? ",%u" : "%u", x->xid.v[i]);
        out(s, "],\"gpu_ok\":%u,\"slowdown\":%u,\"saved\":", x->gpu_ok, x->slowdown); farr(s, &x->saved);
        out(s, ",\"ckpt\":%u", x->ckpt);
        break;
    }
    case UMB_SET_CAPS: out(s, "\"cap_w\":"); farr(s, &m->u.set_caps.cap_w); break;
    case UMB_SET_RAIL: out(s, "\"gpu\":%u,\"on\":%s", m->u.set_rail.gpu, m->u.set_rail.on ? "true" : "false"); break;
    case UMB_RESET_BOARD: break;
    case UMB_CHECKPOINT: out(s, "\"gpu\":%u,\"pause_s\":", m->u.checkpoint.gpu); num(s, m->u.checkpoint.pause_s); break;
    case UMB_RESTORE: out(s, "\"gpu\":%u,\"progress\":", m->u.restore.gpu); num(s, m->u.restore.progress); break;
    case UMB_ACK: out(s, "\"ack_seq\":%u,\"status\":%u", m->u.ack.ack_seq, m->u.ack.status); break;
    case UMB_HIL_SET: out(s, "\"name\":"); str(s, &m->u.hil_set.name); out(s, ",\"value\":"); hilnum(s, &m->u.hil_set.value); break;
    case UMB_HIL_GET: out(s, "\"name\":"); str(s, &m->u.hil_get.name); break;
    case UMB_HIL_VALUE:
        out(s, "\"name\":"); str(s, &m->u.hil_value.name); out(s, ",\"value\":"); hilnum(s, &m->u.hil_value.value);
        out(s, ",\"ref\":%u", m->u.hil_value.ref);
        break;
    default: break;
    }
    out(s, "}}");
}

static umb_msg msg;

/* Decodes one frame (its bytes without the delimiter); the message as JSON into json. */
int umb_host_decode(const uint8_t *encoded, size_t n, char *json, size_t cap)
{
    int reason = umb_decode_frame(encoded, n, &msg);
    sink s = {json, cap, 0};
    if (reason == UMB_R_NONE) message_json(&s, &msg);
    if (cap) json[s.len < cap ? s.len : cap - 1] = 0;
    return reason;
}

typedef struct { uint8_t *buf; size_t cap, len; } bytes_out;

static void put_bytes(void *ctx, const uint8_t *data, size_t n)
{
    bytes_out *b = ctx;
    if (b->cap - b->len >= n) memcpy(b->buf + b->len, data, n);
    b->len += n;
}

/* Decodes a frame and encodes the message again: the wire bytes, delimiter included. */
size_t umb_host_reencode(const uint8_t *encoded, size_t n, uint8_t *wire, size_t cap)
{
    static uint8_t body[UMB_MAX_BODY];
    if (umb_decode_frame(encoded, n, &msg) != UMB_R_NONE) return 0;
    size_t len = umb_encode_body(&msg, body, sizeof body);
    if (len == 0) return 0;
    bytes_out b = {wire, cap, 0};
    umb_frame_write(body, len, put_bytes, &b);
    return b.len <= cap ? b.len : 0;
}

/* Feeds a stream in chunks of `chunk` bytes; the frames as a JSON list, stats[5] the
 * counters (frames, bytes_dropped, crc_errors, oversize, decode_errors). */
int umb_host_stream(const uint8_t *data, size_t n, size_t chunk, char *json, size_t cap, uint32_t *stats)
{
    static umb_rx rx;
    umb_rx_reset(&rx);
    sink s = {json, cap, 0};
    out(&s, "[");
    int count = 0;
    if (chunk == 0) chunk = 1;
    for (size_t at = 0; at < n; at += chunk) {
        size_t end = at + chunk < n ? at + chunk : n;
        for (size_t i = at; i < end; i++) {
            if (umb_rx_byte(&rx, data[i], &msg)) {
                if (count++) out(&s, ",");
                message_json(&s, &msg);
            }
        }
    }
    out(&s, "]");
    if (cap) json[s.len < cap ? s.len : cap - 1] = 0;
    stats[0] = rx.stats.frames; stats[1] = rx.stats.bytes_dropped; stats[2] = rx.stats.crc_errors;
    stats[3] = rx.stats.oversize; stats[4] = rx.stats.decode_errors;
    return count;
}

/* The fuzz target: any bytes, fed whole, must give only counted errors.  Returns the
 * number of frames; stats as above. */
int umb_host_feed(const uint8_t *data, size_t n, uint32_t *stats)
{
    static umb_rx rx;
    umb_rx_reset(&rx);
    int count = 0;
    for (size_t i = 0; i < n; i++) count += umb_rx_byte(&rx, data[i], &msg);
    stats[0] = rx.stats.frames; stats[1] = rx.stats.bytes_dropped; stats[2] = rx.stats.crc_errors;
    stats[3] = rx.stats.oversize; stats[4] = rx.stats.decode_errors;
    return count;
}
