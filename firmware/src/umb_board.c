/* The board side of the serial link (docs/ICD.md §3-§4), for every port of the firmware. */
#include "umb_board.h"

#include <string.h>

/* The arrays kept must hold the board's GPUs, `plant.act` and the 15 `plant.scalars`
 * (build with -DUMB_ARRAY_CAP=N, the same N for every file). */
_Static_assert(UMB_ARRAY_CAP >= UMB_BOARD_MAX_GPUS + 5u && UMB_ARRAY_CAP >= 15u, "UMB_ARRAY_CAP too small");

#define HEARTBEAT_US 200000u    /* never silent more than 0.25 s (ICD §4.3) */
#define MAX_LAG_US 1000000u     /* real-time pacing further behind than this skips frames */
#define WORK_REF_W 700.0        /* 1 work unit = 1 s of work at 700 W, as firmware_sim */
#define T_TOL 1e-6              /* board times equal within 1 µs (ICD §4.3, STEP_DONE) */

/* Microseconds from `then` to `now`; 0 if a HAL's clock ever stepped back (never a wrap
 * to hours, which would trip the watchdog). */
static uint64_t elapsed_us(uint64_t now, uint64_t then) { return now > then ? now - then : 0u; }

/* `plant.scalars`, in this order (docs/real-boards.md §6). */
enum {
    SC_SOLAR_W, SC_BATTERY_SOC, SC_RADIATOR_C, SC_FLAGS, SC_BATTERY_WH, SC_BATTERY_CAP_WH,
    SC_BUS_V, SC_AVIONICS_W, SC_ORBIT_PERIOD_S, SC_ECLIPSE_IN_S, SC_SUN_IN_S, SC_RAILS,
    SC_GPU_OK, SC_SLOWDOWN, SC_CKPT, SC_COUNT,
};

void umb_board_config_defaults(umb_board_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    strcpy(cfg->board_id, "umbra-c-1");
    cfg->gpu_count = UMB_BOARD_MAX_GPUS;
    cfg->cap_min_w = 200.0;
    cfg->cap_max_w = 700.0;
    cfg->sensor_rate_hz = 10.0;
    cfg->watchdog_s = 1.0;
    cfg->utc_at_boot = 0.0;
}

static uint32_t gpus(const umb_board *b) { return b->cfg.gpu_count; }
static uint32_t all_gpus(const umb_board *b) { return gpus(b) >= 32u ? 0xFFFFFFFFu : (1u << gpus(b)) - 1u; }
static double period(const umb_board *b) { return 1.0 / b->cfg.sensor_rate_hz; }

/* --- sending ------------------------------------------------------------------------------ */

typedef struct { umb_board *b; int port; } out_ctx;

static void out_put(void *ctx, const uint8_t *data, size_t n)
{
    out_ctx *o = ctx;
    o->b->write(o->b->write_ctx, o->port, data, n);
}

/* Sends b->tx_msg on a port: session frames at seq 0, the rest numbered. */
static void send(umb_board *b, int port, uint64_t now)
{
    umb_port *p = &b->port[port];
    umb_msg *m = &b->tx_msg;
    if (m->type == UMB_HELLO_ACK) m->seq = 0;
    else m->seq = p->tx_seq = p->tx_seq == UMB_UINT32_MAX ? 1u : p->tx_seq + 1u;
    size_t n = umb_encode_body(m, b->body, sizeof b->body);
    if (n == 0) return; /* cannot happen for the messages a board sends */
    out_ctx o = {b, port};
    umb_frame_write(b->body, n, out_put, &o);
    p->last_tx_us = now;
}

static void send_ack(umb_board *b, int port, uint32_t seq, unsigned status, uint64_t now)
{
    umb_msg_defaults(&b->tx_msg, UMB_ACK);
    b->tx_msg.u.ack.ack_seq = seq;
    b->tx_msg.u.ack.status = status;
    send(b, port, now);
}

static void send_hil_value(umb_board *b, const char *name, const umb_hilnum *v, uint32_t ref, uint64_t now)
{
    umb_msg_defaults(&b->tx_msg, UMB_HIL_VALUE);
    umb_str_set(&b->tx_msg.u.hil_value.name, name);
    b->tx_msg.u.hil_value.value = *v;
    b->tx_msg.u.hil_value.ref = ref;
    send(b, UMB_PORT_HIL, now);
}

static void send_sensor(umb_board *b, uint64_t now)
{
    umb_msg_defaults(&b->tx_msg, UMB_SENSOR);
    umb_sensor *s = &b->tx_msg.u.sensor;
    uint32_t n = gpus(b);
    s->t_board = b->t_board;
    s->utc = b->cfg.utc_at_boot + b->t_board;
    s->temp_c.n = s->power_w.n = s->cap_w.n = s->progress.n = s->saved.n = s->xid.n = (uint8_t)n;
    for (uint32_t i = 0; i < n; i++) {
        s->temp_c.v[i] = b->temp_c[i];
        s->power_w.v[i] = b->power_w[i];
        s->cap_w.v[i] = b->cap_w[i];
        s->progress.v[i] = b->progress[i];
        s->saved.v[i] = b->saved[i];
        s->xid.v[i] = b->xid[i];
    }
    s->rx_errors = umb_board_rx_errors(b);
    if (b->external) {
        const double *x = b->scalars;
        s->solar_w = x[SC_SOLAR_W];
        s->battery_soc = x[SC_BATTERY_SOC];
        s->radiator_c = x[SC_RADIATOR_C];
        s->flags = (uint32_t)x[SC_FLAGS] & (UMB_FLAG_ECLIPSE | UMB_FLAG_HW_SLOWDOWN);
        s->battery_wh = x[SC_BATTERY_WH];
        s->battery_capacity_wh = x[SC_BATTERY_CAP_WH];
        s->bus_v = x[SC_BUS_V];
        s->avionics_w = x[SC_AVIONICS_W];
        s->orbit_period_s = x[SC_ORBIT_PERIOD_S];
        s->eclipse_in_s = x[SC_ECLIPSE_IN_S];
        s->sun_in_s = x[SC_SUN_IN_S];
        s->rails = (uint32_t)x[SC_RAILS] & all_gpus(b);
        s->gpu_ok = (uint32_t)x[SC_GPU_OK];
        s->slowdown = (uint32_t)x[SC_SLOWDOWN] & all_gpus(b);
        s->ckpt = (uint32_t)x[SC_CKPT] & all_gpus(b);
    } else {
        s->solar_w = b->solar_w;
        s->battery_soc = b->battery_soc;
        s->radiator_c = b->radiator_c;
        s->rails = b->rails;
        s->ckpt = b->ckpt;
        s->gpu_ok = 0xFFFFFFFFu;
    }
    if (b->safe) s->flags |= UMB_FLAG_WATCHDOG_SAFE;
    b->port[UMB_PORT_MAIN].stats.sensor_frames++;
    b->frames_sent++;
    b->sent_since_boot = true;
    b->sensor_sent_us = now;
    send(b, UMB_PORT_MAIN, now);
}

/* --- the board's own model ---------------------------------------------------------------- */

static void model_step(umb_board *b, double dt)
{
    for (uint32_t i = 0; i < gpus(b); i++) {
        bool on = b->rails & (1u << i);
        double p = on ? (b->demand_w[i] < b->cap_w[i] ? b->demand_w[i] : b->cap_w[i]) : 0.0;
        b->power_w[i] = p;
        if (b->ckpt & (1u << i)) {
            b->ckpt_left_s[i] -= dt;
            if (b->ckpt_left_s[i] <= T_TOL) {
                b->saved[i] = b->ckpt_from[i];
                b->ckpt &= ~(1u << i);
            }
            continue; /* its work pauses while the checkpoint is written */
        }
        b->progress[i] += dt * p / WORK_REF_W;
    }
}

/* --- the clock ---------------------------------------------------------------------------- */

static void hil_notify_due(umb_board *b, uint64_t now)
{
    umb_hilnum v = {1, false, {b->due_t}};
    if (b->port[UMB_PORT_HIL].session) send_hil_value(b, "plant.due", &v, 0, now);
    b->due_sent_us = now;
}

static void advance(umb_board *b, uint32_t frames, uint64_t now)
{
    double target = (double)(b->frame + frames) * period(b);
    if (b->external) {
        b->waiting_plant = true;
        b->due_t = target;
        b->due_frames = frames;
        hil_notify_due(b, now);
        return;
    }
    model_step(b, target - b->t_board);
    b->frame += frames;
    b->t_board = target;
    send_sensor(b, now);
}

static void reanchor(umb_board *b, uint64_t now)
{
    b->anchor_us = now;
    b->anchor_frame = b->frame;
}

static void reboot(umb_board *b, uint64_t now)
{
    umb_port *p = &b->port[UMB_PORT_MAIN];
    umb_port_stats keep = p->stats;
    memset(p, 0, sizeof *p);
    umb_rx_reset(&p->rx); /* rx_errors count from 0 again (ICD §4.6.1) */
    p->stats = keep;
    p->last_tx_us = now;
    b->t_board = 0.0;
    b->frame = 0;
    b->sent_since_boot = false;
    b->step_done_t = -1.0;
    b->reset_pending = false;
    b->fed_us = now;
    b->safe = false;
    b->waiting_plant = false;
    b->rails = all_gpus(b);
    for (uint32_t i = 0; i < UMB_BOARD_MAX_GPUS; i++) {
        b->cap_w[i] = b->cfg.cap_min_w; /* a safe boot: the node is not back in control yet */
        b->xid[i] = 0;
        if (!b->external) b->progress[i] = b->saved[i]; /* unsaved work is lost */
        b->power_w[i] = 0.0;
    }
    b->ckpt = 0;
    reanchor(b, now);
}

static void run_clock(umb_board *b, uint64_t now)
{
    if (b->waiting_plant) {
        /* a bench that missed the announcement hears it again */
        if (elapsed_us(now, b->due_sent_us) > 500000u) hil_notify_due(b, now);
        return;
    }
    if (b->paused) {
        if (b->step_budget_s > 1e-9) {
            b->step_budget_s -= period(b);
            advance(b, 1, now);
        }
        reanchor(b, now);
        return;
    }
    if (b->lockstep) {
        bool done = b->step_done_t >= b->t_board - T_TOL;
        uint64_t timeout = (uint64_t)(b->lockstep_timeout_s * 1e6);
        if (!b->sent_since_boot || done || elapsed_us(now, b->sensor_sent_us) >= timeout) {
            advance(b, 1, now);
            reanchor(b, now);
        }
        return;
    }
    double per_us = period(b) / b->speed * 1e6;
    uint64_t due = b->anchor_us + (uint64_t)((double)(b->frame + 1u - b->anchor_frame) * per_us);
    if (now < due) return;
    uint64_t late = now - due;
    if (late > MAX_LAG_US) {
        advance(b, (uint32_t)((double)late / per_us) + 1u, now);
        reanchor(b, now);
    } else {
        advance(b, 1, now);
    }
}

/* --- watchdog ----------------------------------------------------------------------------- */

static void check_watchdog(umb_board *b, uint64_t now)
{
    if (b->safe || (double)elapsed_us(now, b->fed_us) < b->cfg.watchdog_s * 1e6) return;
    for (uint32_t i = 0; i < UMB_BOARD_MAX_GPUS; i++) b->cap_w[i] = b->cfg.cap_min_w;
    b->safe = true;
    b->port[UMB_PORT_MAIN].stats.watchdog_trips++;
}

/* --- sequence numbers (ICD §3.6) ---------------------------------------------------------- */

static int32_t distance(uint32_t newer, uint32_t older)
{
    uint64_t m = UMB_UINT32_MAX;
    uint64_t d = ((uint64_t)newer + m - older) % m;
    return d >= 0x80000000ull ? (int32_t)((int64_t)d - (int64_t)m) : (int32_t)d;
}

static uint8_t ring_get(const umb_port *p, uint32_t back)
{
    uint16_t i = (uint16_t)((p->ring_pos + UMB_RX_WINDOW - back) % UMB_RX_WINDOW);
    return (uint8_t)((p->ring[i / 2u] >> ((i % 2u) * 4u)) & 0x0Fu);
}

static void ring_set(umb_port *p, uint32_t back, uint8_t v)
{
    uint16_t i = (uint16_t)((p->ring_pos + UMB_RX_WINDOW - back) % UMB_RX_WINDOW);
    unsigned shift = (i % 2u) * 4u;
    p->ring[i / 2u] = (uint8_t)((p->ring[i / 2u] & ~(0x0Fu << shift)) | ((v & 0x0Fu) << shift));
}

#define SEEN 0x1u
#define ACKED 0x2u

static void track_from(umb_port *p, uint32_t seq)
{
    memset(p->ring, 0, sizeof p->ring);
    p->ring_pos = 0;
    p->rx_high = seq;
    p->rx_any = true;
    ring_set(p, 0, SEEN);
}

/* Classifies a numbered frame; returns its ring entry's distance behind the highest
 * (0 … 1023) when it is to be delivered, -1 for a duplicate (*entry: its ring value). */
static int32_t classify(umb_port *p, uint32_t seq, uint8_t *entry)
{
    if (!p->rx_any) { track_from(p, seq); return 0; }
    int32_t d = distance(seq, p->rx_high);
    if (d > 0) {
        p->stats.lost += (uint32_t)d - 1u;
        uint32_t clear = (uint32_t)d < UMB_RX_WINDOW ? (uint32_t)d : UMB_RX_WINDOW;
        p->ring_pos = (uint16_t)((p->ring_pos + (uint32_t)d) % UMB_RX_WINDOW);
        for (uint32_t k = 0; k < clear; k++) ring_set(p, k, 0);
        p->rx_high = seq;
        ring_set(p, 0, SEEN);
        return 0;
    }
    if (d > -(int32_t)UMB_RX_WINDOW) {
        uint32_t back = (uint32_t)(-d);
        uint8_t e = ring_get(p, back);
        if (e & SEEN) { p->stats.duplicates++; *entry = e; return -1; }
        if (p->stats.lost > 0) p->stats.lost--;
        ring_set(p, back, SEEN);
        return (int32_t)back;
    }
    p->stats.peer_restarts++;
    track_from(p, seq);
    return 0;
}

static void ack_reliable(umb_board *b, int port, int32_t back, uint32_t seq, unsigned status, uint64_t now)
{
    ring_set(&b->port[port], (uint32_t)back, (uint8_t)(SEEN | ACKED | ((status & 3u) << 2)));
    if (status) b->port[port].stats.commands_refused++;
    else b->port[port].stats.commands_applied++;
    send_ack(b, port, seq, status, now);
}

/* --- commands (ICD §4.5-§4.6.2) ----------------------------------------------------------- */

static bool gpu_usable(const umb_board *b, uint32_t gpu)
{
    if (gpu >= gpus(b) || !(b->rails & (1u << gpu))) return false;
    if (b->external) {
        uint32_t ok = (uint32_t)b->scalars[SC_GPU_OK], rails = (uint32_t)b->scalars[SC_RAILS];
        return (ok & rails & (1u << gpu)) != 0;
    }
    return true;
}

static unsigned command(umb_board *b, const umb_msg *m)
{
    switch (m->type) {
    case UMB_SET_CAPS: {
        const umb_farr *c = &m->u.set_caps.cap_w;
        if (c->n != gpus(b)) return UMB_BAD_ARGUMENT;
        for (uint32_t i = 0; i < c->n; i++)
            if (!(c->v[i] >= b->cfg.cap_min_w && c->v[i] <= b->cfg.cap_max_w)) return UMB_BAD_ARGUMENT;
        for (uint32_t i = 0; i < c->n; i++) b->cap_w[i] = c->v[i];
        return UMB_OK;
    }
    case UMB_SET_RAIL:
        if (m->u.set_rail.gpu >= gpus(b)) return UMB_BAD_ARGUMENT;
        if (b->external) {
            /* the bench applies every request, so a cycle within one frame is not lost */
            uint32_t g = m->u.set_rail.gpu;
            bool off_pending = b->rail_gen[g] && b->rail_req[g] != 1u;
            b->rail_req[g] = m->u.set_rail.on ? (off_pending ? 2u : 1u) : 0u;
            b->rail_gen[g] = ++b->req_gen;
        }
        if (m->u.set_rail.on) b->rails |= 1u << m->u.set_rail.gpu;
        else {
            b->rails &= ~(1u << m->u.set_rail.gpu);
            if (!b->external && (b->ckpt & (1u << m->u.set_rail.gpu))) {
                b->ckpt &= ~(1u << m->u.set_rail.gpu); /* work lost: the checkpoint fails */
            }
            if (!b->external) b->progress[m->u.set_rail.gpu] = b->saved[m->u.set_rail.gpu];
        }
        return UMB_OK;
    case UMB_RESET_BOARD:
        b->reset_pending = true;
        return UMB_OK;
    case UMB_CHECKPOINT: {
        uint32_t g = m->u.checkpoint.gpu;
        if (!gpu_usable(b, g)) return UMB_BAD_ARGUMENT;
        if (b->external) {
            b->ckpt_req[g] = m->u.checkpoint.pause_s;
            b->ckpt_gen[g] = ++b->req_gen;
        } else if (!(b->ckpt & (1u << g))) {
            b->ckpt |= 1u << g;
            b->ckpt_left_s[g] = m->u.checkpoint.pause_s;
            b->ckpt_from[g] = b->progress[g];
            if (m->u.checkpoint.pause_s <= 0.0) { b->saved[g] = b->progress[g]; b->ckpt &= ~(1u << g); }
        }
        return UMB_OK;
    }
    case UMB_RESTORE: {
        uint32_t g = m->u.restore.gpu;
        if (g >= gpus(b)) return UMB_BAD_ARGUMENT;
        if (b->external) {
            b->restore_req[g] = m->u.restore.progress;
            b->restore_gen[g] = ++b->req_gen;
        } else {
            b->progress[g] = b->saved[g] = m->u.restore.progress;
            b->ckpt &= ~(1u << g);
        }
        return UMB_OK;
    }
    default:
        return UMB_UNSUPPORTED;
    }
}

/* --- HIL parameters (ICD §4.12) ----------------------------------------------------------- */

static bool name_is(const umb_str *s, const char *name) { return umb_str_eq(s, name); }

static void per_gpu(const umb_board *b, umb_hilnum *v, const double *src)
{
    v->is_array = true;
    v->n = (uint8_t)gpus(b);
    for (uint32_t i = 0; i < gpus(b); i++) v->v[i] = src[i];
}

static void scalar(umb_hilnum *v, double x)
{
    v->is_array = false;
    v->n = 1;
    v->v[0] = x;
}

/* The value of a name; false: unknown (answered NaN). */
static bool get_param(umb_board *b, const umb_str *name, umb_hilnum *v)
{
    double tmp[UMB_BOARD_MAX_GPUS];
    if (name_is(name, "t_board")) scalar(v, b->t_board);
    else if (name_is(name, "temp_c") || name_is(name, "plant.temp_c")) per_gpu(b, v, b->temp_c);
    else if (name_is(name, "cap_w")) per_gpu(b, v, b->cap_w);
    else if (name_is(name, "power_w")) per_gpu(b, v, b->power_w);
    else if (name_is(name, "progress")) per_gpu(b, v, b->progress);
    else if (name_is(name, "demand_w")) per_gpu(b, v, b->demand_w);
    else if (name_is(name, "job.saved")) per_gpu(b, v, b->saved);
    else if (name_is(name, "sink_c")) scalar(v, b->sink_c);
    else if (name_is(name, "watchdog_safe")) scalar(v, b->safe ? 1.0 : 0.0);
    else if (name_is(name, "rx_errors")) scalar(v, (double)umb_board_rx_errors(b));
    else if (name_is(name, "solar_w")) scalar(v, b->external ? b->scalars[SC_SOLAR_W] : b->solar_w);
    else if (name_is(name, "battery_soc")) scalar(v, b->external ? b->scalars[SC_BATTERY_SOC] : b->battery_soc);
    else if (name_is(name, "radiator_c") || name_is(name, "plant.radiator_c"))
        scalar(v, b->external ? b->scalars[SC_RADIATOR_C] : b->radiator_c);
    else if (name_is(name, "rails")) {
        for (uint32_t i = 0; i < gpus(b); i++) tmp[i] = (b->rails >> i) & 1u ? 1.0 : 0.0;
        per_gpu(b, v, tmp);
    }
    else if (name_is(name, "time.pause")) scalar(v, b->paused ? 1.0 : 0.0);
    else if (name_is(name, "time.step_s")) scalar(v, b->step_budget_s > 0.0 ? b->step_budget_s : 0.0);
    else if (name_is(name, "time.speed")) scalar(v, b->speed);
    else if (name_is(name, "time.lockstep")) scalar(v, b->lockstep ? 1.0 : 0.0);
    else if (name_is(name, "time.lockstep_timeout_s")) scalar(v, b->lockstep_timeout_s);
    else if (name_is(name, "time.frames")) scalar(v, (double)b->frames_sent);
    else if (name_is(name, "board.reset") || name_is(name, "board.resets")) scalar(v, (double)b->resets);
    else if (name_is(name, "board.gpu_count")) scalar(v, (double)b->cfg.gpu_count);
    else if (name_is(name, "board.cap_min_w")) scalar(v, b->cfg.cap_min_w);
    else if (name_is(name, "board.cap_max_w")) scalar(v, b->cfg.cap_max_w);
    else if (name_is(name, "board.sensor_rate_hz")) scalar(v, b->cfg.sensor_rate_hz);
    else if (name_is(name, "board.watchdog_s")) scalar(v, b->cfg.watchdog_s);
    else if (name_is(name, "board.utc_at_boot")) scalar(v, b->cfg.utc_at_boot);
    else if (name_is(name, "board.max_gpus")) scalar(v, (double)UMB_BOARD_MAX_GPUS);
    else if (name_is(name, "plant.external")) scalar(v, b->external ? 1.0 : 0.0);
    else if (name_is(name, "plant.due")) scalar(v, b->waiting_plant ? b->due_t : -1.0);
    else if (name_is(name, "plant.act")) {
        /* [request generation, resets, rail request mask, checkpoint mask, restore mask, caps…] */
        uint32_t cm = 0, rm = 0, lm = 0;
        for (uint32_t i = 0; i < gpus(b); i++) {
            if (b->rail_gen[i]) lm |= 1u << i;
            if (b->ckpt_gen[i]) cm |= 1u << i;
            if (b->restore_gen[i]) rm |= 1u << i;
        }
        v->is_array = true;
        v->n = (uint8_t)(5u + gpus(b));
        v->v[0] = (double)b->req_gen;
        v->v[1] = (double)b->resets;
        v->v[2] = (double)lm;
        v->v[3] = (double)cm;
        v->v[4] = (double)rm;
        for (uint32_t i = 0; i < gpus(b); i++) v->v[5 + i] = b->cap_w[i];
    }
    else if (name_is(name, "plant.ckpt")) {
        for (uint32_t i = 0; i < gpus(b); i++) tmp[i] = b->ckpt_gen[i] ? b->ckpt_req[i] : -1.0;
        per_gpu(b, v, tmp);
    }
    else if (name_is(name, "plant.rail")) {
        for (uint32_t i = 0; i < gpus(b); i++) tmp[i] = b->rail_gen[i] ? (double)b->rail_req[i] : -1.0;
        per_gpu(b, v, tmp);
    }
    else if (name_is(name, "plant.restore")) {
        for (uint32_t i = 0; i < gpus(b); i++) tmp[i] = b->restore_gen[i] ? b->restore_req[i] : -1.0;
        per_gpu(b, v, tmp);
    }
    else return false;
    return true;
}

static double nan_value(void)
{
    const uint64_t bits = 0x7ff8000000000000ull;
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

static bool finite_in(double x, double lo, double hi) { return x == x && x >= lo && x <= hi; }

static bool flag_value(const umb_hilnum *v, bool *out)
{
    if (v->is_array || !(v->v[0] == 0.0 || v->v[0] == 1.0)) return false;
    *out = v->v[0] == 1.0;
    return true;
}

/* A per-GPU value: a float sets every GPU, an array must have gpu_count elements. */
static bool set_per_gpu(umb_board *b, const umb_hilnum *v, double *dst, double lo, double hi)
{
    if (v->is_array && v->n != gpus(b)) return false;
    for (uint32_t i = 0; i < v->n; i++) if (!finite_in(v->v[i], lo, hi)) return false;
    for (uint32_t i = 0; i < gpus(b); i++) dst[i] = v->v[v->is_array ? i : 0];
    return true;
}

static bool one(const umb_hilnum *v, double lo, double hi, double *out)
{
    if (v->is_array || !finite_in(v->v[0], lo, hi)) return false;
    *out = v->v[0];
    return true;
}

/* Config changes reopen the session: the node sees a new HELLO_ACK (S9). */
static void reconfigured(umb_board *b)
{
    b->port[UMB_PORT_MAIN].session = false;
}

static unsigned set_param(umb_board *b, const umb_str *name, const umb_hilnum *v, uint64_t now)
{
    double x;
    bool f;
    if (name_is(name, "demand_w")) return set_per_gpu(b, v, b->demand_w, 0, 5000) ? UMB_OK : UMB_BAD_ARGUMENT;
    if (name_is(name, "sink_c")) return one(v, -273.15, 200, &b->sink_c) ? UMB_OK : UMB_BAD_ARGUMENT;
    if (name_is(name, "plant.temp_c")) {
        /* NaN allowed: a sensor with no valid reading */
        if (v->is_array && v->n != gpus(b)) return UMB_BAD_ARGUMENT;
        for (uint32_t i = 0; i < v->n; i++)
            if (v->v[i] == v->v[i] && !(v->v[i] >= -273.15 && v->v[i] <= 500)) return UMB_BAD_ARGUMENT;
        for (uint32_t i = 0; i < gpus(b); i++) b->temp_c[i] = v->v[v->is_array ? i : 0];
        return UMB_OK;
    }
    if (name_is(name, "plant.radiator_c")) {
        if (v->is_array || (v->v[0] == v->v[0] && !(v->v[0] >= -273.15 && v->v[0] <= 500))) return UMB_BAD_ARGUMENT;
        b->radiator_c = v->v[0];
        return UMB_OK;
    }
    if (name_is(name, "solar_w") && !b->external) return one(v, 0, 1e6, &b->solar_w) ? UMB_OK : UMB_BAD_ARGUMENT;
    if (name_is(name, "battery_soc") && !b->external) return one(v, 0, 1, &b->battery_soc) ? UMB_OK : UMB_BAD_ARGUMENT;
    if (name_is(name, "time.pause")) {
        if (!flag_value(v, &f)) return UMB_BAD_ARGUMENT;
        b->paused = f;
        reanchor(b, now);
        return UMB_OK;
    }
    if (name_is(name, "time.step_s")) {
        if (!one(v, 0, 1e7, &x)) return UMB_BAD_ARGUMENT;
        b->step_budget_s += x;
        return UMB_OK;
    }
    if (name_is(name, "time.speed")) {
        if (!one(v, 0, 1e4, &x) || x <= 0) return UMB_BAD_ARGUMENT;
        b->speed = x;
        reanchor(b, now);
        return UMB_OK;
    }
    if (name_is(name, "time.lockstep")) {
        if (!flag_value(v, &f)) return UMB_BAD_ARGUMENT;
        b->lockstep = f;
        reanchor(b, now);
        return UMB_OK;
    }
    if (name_is(name, "time.lockstep_timeout_s")) return one(v, 0.001, 3600, &b->lockstep_timeout_s) ? UMB_OK : UMB_BAD_ARGUMENT;
    if (name_is(name, "board.reset")) {
        if (v->is_array || v->v[0] != v->v[0]) return UMB_BAD_ARGUMENT;
        b->reset_pending = true;
        return UMB_OK;
    }
    if (name_is(name, "board.gpu_count")) {
        if (!one(v, 1, UMB_BOARD_MAX_GPUS, &x) || x != (double)(uint32_t)x) return UMB_BAD_ARGUMENT;
        b->cfg.gpu_count = (uint32_t)x;
        b->rails = all_gpus(b);
        reconfigured(b);
        return UMB_OK;
    }
    if (name_is(name, "board.cap_min_w") || name_is(name, "board.cap_max_w")) {
        bool lo = name_is(name, "board.cap_min_w");
        if (!one(v, 0, 5000, &x)) return UMB_BAD_ARGUMENT;
        if (lo ? x > b->cfg.cap_max_w : x < b->cfg.cap_min_w) return UMB_BAD_ARGUMENT;
        if (lo) b->cfg.cap_min_w = x;
        else b->cfg.cap_max_w = x;
        for (uint32_t i = 0; i < UMB_BOARD_MAX_GPUS; i++) {
            if (b->cap_w[i] < b->cfg.cap_min_w) b->cap_w[i] = b->cfg.cap_min_w;
            if (b->cap_w[i] > b->cfg.cap_max_w) b->cap_w[i] = b->cfg.cap_max_w;
        }
        reconfigured(b);
        return UMB_OK;
    }
    if (name_is(name, "board.sensor_rate_hz")) {
        if (!one(v, 0.01, 1000, &x)) return UMB_BAD_ARGUMENT;
        b->cfg.sensor_rate_hz = x;
        /* keep board time: the frame counter is re-based on the new period */
        b->frame = (uint32_t)(b->t_board / period(b) + 0.5);
        b->t_board = (double)b->frame * period(b);
        reanchor(b, now);
        reconfigured(b);
        return UMB_OK;
    }
    if (name_is(name, "board.watchdog_s")) {
        if (!one(v, 0.1, 3600, &x)) return UMB_BAD_ARGUMENT;
        b->cfg.watchdog_s = x;
        reconfigured(b);
        return UMB_OK;
    }
    if (name_is(name, "board.utc_at_boot")) return one(v, 0, 1e11, &b->cfg.utc_at_boot) ? UMB_OK : UMB_BAD_ARGUMENT;
    if (name_is(name, "plant.external")) {
        if (!flag_value(v, &f)) return UMB_BAD_ARGUMENT;
        b->external = f;
        if (!f) b->waiting_plant = false;
        return UMB_OK;
    }
    if (b->external) {
        if (name_is(name, "plant.power_w")) return set_per_gpu(b, v, b->power_w, 0, 5000) ? UMB_OK : UMB_BAD_ARGUMENT;
        if (name_is(name, "plant.progress")) return set_per_gpu(b, v, b->progress, 0, 1e18) ? UMB_OK : UMB_BAD_ARGUMENT;
        if (name_is(name, "plant.saved")) return set_per_gpu(b, v, b->saved, 0, 1e18) ? UMB_OK : UMB_BAD_ARGUMENT;
        if (name_is(name, "plant.xid")) {
            double tmp[UMB_BOARD_MAX_GPUS];
            if (!set_per_gpu(b, v, tmp, 0, 4294967295.0)) return UMB_BAD_ARGUMENT;
            for (uint32_t i = 0; i < gpus(b); i++) b->xid[i] = (uint32_t)tmp[i];
            return UMB_OK;
        }
        if (name_is(name, "plant.scalars")) {
            static const double lo[SC_COUNT] = {0, 0, -273.15, 0, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0};
            static const double hi[SC_COUNT] = {1e6, 1, 500, 7, 1e7, 1e7, 1e4, 5000, 1e7, 1e7, 1e7,
                                                4294967295.0, 4294967295.0, 4294967295.0, 4294967295.0};
            if (!v->is_array || v->n != SC_COUNT) return UMB_BAD_ARGUMENT;
            for (uint32_t i = 0; i < SC_COUNT; i++) {
                bool nan_ok = i == SC_RADIATOR_C;
                if (v->v[i] != v->v[i] ? !nan_ok : !(v->v[i] >= lo[i] && v->v[i] <= hi[i])) return UMB_BAD_ARGUMENT;
            }
            memcpy(b->scalars, v->v, sizeof(double) * SC_COUNT);
            return UMB_OK;
        }
        if (name_is(name, "plant.advance")) {
            /* [board time, request generation applied] */
            if (!v->is_array || v->n != 2 || !b->waiting_plant) return UMB_BAD_ARGUMENT;
            double d = v->v[0] - b->due_t;
            if (!(d > -T_TOL && d < T_TOL) || !finite_in(v->v[1], 0, 4294967295.0)) return UMB_BAD_ARGUMENT;
            uint32_t gen = (uint32_t)v->v[1];
            for (uint32_t i = 0; i < UMB_BOARD_MAX_GPUS; i++) {
                if (b->ckpt_gen[i] && b->ckpt_gen[i] <= gen) b->ckpt_gen[i] = 0;
                if (b->restore_gen[i] && b->restore_gen[i] <= gen) b->restore_gen[i] = 0;
                if (b->rail_gen[i] && b->rail_gen[i] <= gen) b->rail_gen[i] = 0;
            }
            b->waiting_plant = false;
            b->frame += b->due_frames;
            b->t_board = b->due_t;
            send_sensor(b, now);
            return UMB_OK;
        }
    }
    return UMB_BAD_ARGUMENT; /* unknown or read-only */
}

/* --- receiving ---------------------------------------------------------------------------- */

static void hello(umb_board *b, int port, const umb_hello *h, uint64_t now)
{
    umb_port *p = &b->port[port];
    /* the highest version in both ranges; 0 when they do not overlap (S4) */
    uint32_t top = h->max_version < UMB_PROTOCOL_VERSION ? h->max_version : UMB_PROTOCOL_VERSION;
    uint32_t lo = h->min_version > 1u ? h->min_version : 1u;
    uint32_t version = lo <= top ? top : 0u;
    p->stats.hellos++;
    p->session = version != 0;
    p->tx_seq = 0;        /* S2: forget the port's channel state */
    p->rx_any = false;
    umb_msg_defaults(&b->tx_msg, UMB_HELLO_ACK);
    umb_hello_ack *a = &b->tx_msg.u.hello_ack;
    a->version = version;
    a->min_version = 1;
    a->max_version = UMB_PROTOCOL_VERSION;
    umb_str_set(&a->board_id, b->cfg.board_id);
    umb_str_set(&a->fw_version, UMB_FW_VERSION);
    a->gpu_count = b->cfg.gpu_count;
    a->cap_min_w = b->cfg.cap_min_w;
    a->cap_max_w = b->cfg.cap_max_w;
    a->sensor_rate_hz = b->cfg.sensor_rate_hz;
    a->watchdog_s = b->cfg.watchdog_s;
    a->features = UMB_FEATURE_CHECKPOINTS | UMB_FEATURE_LOCKSTEP;
    send(b, port, now);
}

static void deliver(umb_board *b, int port, const umb_msg *m, int32_t back, uint64_t now)
{
    bool main = port == UMB_PORT_MAIN;
    if (m->type == UMB_STEP_DONE) {
        if (!main) return;
        /* a STEP_DONE for a time this board has not reached was meant for the clock
         * before a reset: believing it would let lockstep run free (ICD §4.3) */
        if (m->u.step_done.t_board <= b->t_board + T_TOL) {
            if (m->u.step_done.t_board > b->step_done_t) b->step_done_t = m->u.step_done.t_board;
        } else {
            b->port[port].stats.stale_step_done++;
        }
        return;
    }
    if (m->type == UMB_HIL_GET) {
        if (main) return;
        umb_hilnum v;
        if (!get_param(b, &m->u.hil_get.name, &v)) scalar(&v, nan_value()); /* unknown name */
        char name[UMB_NAME_BYTES + 1];
        memcpy(name, m->u.hil_get.name.s, m->u.hil_get.name.len + 1u);
        send_hil_value(b, name, &v, m->seq, now);
        return;
    }
    if (!umb_type_reliable(m->type)) return; /* HEARTBEAT, and what only a board sends */
    unsigned status;
    if (m->type == UMB_HIL_SET) status = main ? UMB_UNSUPPORTED : set_param(b, &m->u.hil_set.name, &m->u.hil_set.value, now);
    else status = main ? command(b, m) : UMB_UNSUPPORTED;
    ack_reliable(b, port, back, m->seq, status, now);
}

static void frame_in(umb_board *b, int port, const umb_msg *m, uint64_t now)
{
    umb_port *p = &b->port[port];
    bool session_type = m->type == UMB_HELLO || m->type == UMB_HELLO_ACK;
    if (session_type != (m->seq == 0)) { p->stats.misnumbered++; return; } /* §3.1 */
    if (m->type == UMB_HELLO) { hello(b, port, &m->u.hello, now); return; }
    if (session_type) return; /* a HELLO_ACK at the board */
    if (!p->session) { p->stats.ignored_outside_session++; return; } /* S8 */
    if (port == UMB_PORT_MAIN) {
        b->fed_us = now; /* a numbered frame of a session, duplicates included (§4.3) */
        b->safe = false;
    }
    uint8_t entry = 0;
    int32_t back = classify(p, m->seq, &entry);
    if (back < 0) {
        /* a duplicate: a reliable one already acknowledged gets the same status again */
        if (umb_type_reliable(m->type) && (entry & ACKED)) send_ack(b, port, m->seq, (entry >> 2) & 3u, now);
        return;
    }
    deliver(b, port, m, back, now);
}

void umb_board_rx(umb_board *b, int port, const uint8_t *data, size_t n, uint64_t now)
{
    if (port != UMB_PORT_MAIN && port != UMB_PORT_HIL) return;
    check_watchdog(b, now); /* a silence that ran out before these bytes still trips */
    for (size_t i = 0; i < n; i++) {
        if (umb_rx_byte(&b->port[port].rx, data[i], &b->rx_msg)) frame_in(b, port, &b->rx_msg, now);
        if (b->reset_pending) reboot(b, now), b->resets++;
    }
}

void umb_board_poll(umb_board *b, uint64_t now)
{
    check_watchdog(b, now);
    if (b->reset_pending) { reboot(b, now); b->resets++; }
    run_clock(b, now);
    umb_port *p = &b->port[UMB_PORT_MAIN];
    if (p->session && elapsed_us(now, p->last_tx_us) >= HEARTBEAT_US) {
        umb_msg_defaults(&b->tx_msg, UMB_HEARTBEAT);
        b->tx_msg.u.heartbeat.uptime_s = b->t_board;
        send(b, UMB_PORT_MAIN, now);
    }
}

uint32_t umb_board_rx_errors(const umb_board *b)
{
    const umb_rx_stats *s = &b->port[UMB_PORT_MAIN].rx.stats;
    uint64_t sum = (uint64_t)s->crc_errors + s->oversize + s->decode_errors;
    return sum > UMB_UINT32_MAX ? UMB_UINT32_MAX : (uint32_t)sum;
}

void umb_board_init(umb_board *b, const umb_board_config *cfg, umb_write_fn write, void *ctx, uint64_t now)
{
    memset(b, 0, sizeof *b);
    b->cfg = *cfg;
    if (b->cfg.gpu_count < 1u || b->cfg.gpu_count > UMB_BOARD_MAX_GPUS) b->cfg.gpu_count = UMB_BOARD_MAX_GPUS;
    b->write = write;
    b->write_ctx = ctx;
    umb_rx_reset(&b->port[0].rx);
    umb_rx_reset(&b->port[1].rx);
    b->speed = 1.0;
    b->lockstep_timeout_s = 1.0;
    b->step_done_t = -1.0;
    b->sink_c = -40.0;
    b->solar_w = 0.0;
    b->battery_soc = 1.0;
    b->radiator_c = 20.0;
    for (uint32_t i = 0; i < UMB_BOARD_MAX_GPUS; i++) {
        b->temp_c[i] = 45.0;
        b->demand_w[i] = 500.0;
        b->ckpt_req[i] = b->restore_req[i] = -1.0;
    }
    b->scalars[SC_GPU_OK] = 4294967295.0;
    b->scalars[SC_RAILS] = 4294967295.0;
    b->scalars[SC_BATTERY_SOC] = 1.0;
    for (int i = SC_BATTERY_WH; i <= SC_SUN_IN_S; i++) b->scalars[i] = -1.0;
    reboot(b, now);
    /* the first byte on the line ends whatever partial frame it holds (ICD §2.7) */
    const uint8_t zero = 0;
    write(ctx, UMB_PORT_MAIN, &zero, 1);
    write(ctx, UMB_PORT_HIL, &zero, 1);
}
