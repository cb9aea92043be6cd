/* Umbra board firmware: the board side of docs/ICD.md, sans-I/O.
 *
 * The port (QEMU, a real MCU, the host) owns the UARTs and the clock: it feeds received
 * bytes to umb_board_rx, calls umb_board_poll often (every millisecond or faster) and
 * writes what the board hands to its write callback.  Nothing here touches hardware.
 *
 * Sensors come from one of two sources (HIL `plant.external`):
 *   0: the board's own model: sensor values are constants the bench sets over the HIL port
 *      (`plant.temp_c`, `plant.radiator_c`, `solar_w`, `battery_soc`), power is
 *      min(demand, cap) on a powered rail and progress grows with it;
 *   1: the plant on the bench (docs/real-boards.md §6): the board announces each frame it
 *      wants (`plant.due`, an unsolicited HIL_VALUE), the bench reads the actuators
 *      (`plant.act`, `plant.ckpt`, `plant.restore`), steps its plant and sends the sensor
 *      values (`plant.temp_c` … `plant.scalars`) and `plant.advance`; only then does the
 *      board send the SENSOR frame.  Time rules (lockstep, pause, speed) stay the board's. */
#ifndef UMB_BOARD_H
#define UMB_BOARD_H

#ifndef UMB_BOARD_MAX_GPUS
#define UMB_BOARD_MAX_GPUS 8u
#endif
#include "umb_msg.h"
#define UMB_RX_WINDOW 1024u
#define UMB_PORT_MAIN 0
#define UMB_PORT_HIL 1
#define UMB_FW_VERSION "umbra-c-0.1"

typedef void (*umb_write_fn)(void *ctx, int port, const uint8_t *data, size_t n);

typedef struct {
    char board_id[UMB_NAME_BYTES + 1];
    uint32_t gpu_count;
    double cap_min_w, cap_max_w, sensor_rate_hz, watchdog_s, utc_at_boot;
} umb_board_config;

void umb_board_config_defaults(umb_board_config *cfg);

typedef struct {
    uint32_t hellos, commands_applied, commands_refused, watchdog_trips, sensor_frames;
    uint32_t stale_step_done, ignored_outside_session, misnumbered, duplicates, lost, peer_restarts;
} umb_port_stats;

typedef struct {
    umb_rx rx;
    bool session;             /* a HELLO with a common version was answered */
    uint32_t tx_seq;          /* last numbered frame sent; 0: none since the session began */
    bool rx_any;              /* a numbered frame arrived this session */
    uint32_t rx_high;         /* highest seq seen */
    uint16_t ring_pos;        /* ring index of rx_high */
    uint8_t ring[UMB_RX_WINDOW / 2u]; /* 4 bits a seq: seen, acknowledged, status (2 bits) */
    uint64_t last_tx_us;
    umb_port_stats stats;
} umb_port;

typedef struct {
    umb_board_config cfg;
    umb_write_fn write;
    void *write_ctx;
    umb_port port[2];
    /* the body of a frame being sent: a SENSOR with every field takes 281 + 59 a GPU bytes */
    uint8_t body[320u + 64u * UMB_BOARD_MAX_GPUS];

    /* clock (board time) */
    double t_board;
    uint32_t frame;
    uint32_t frames_sent;
    bool paused, lockstep;
    double step_budget_s, speed, lockstep_timeout_s;
    uint64_t anchor_us;
    uint32_t anchor_frame;
    uint64_t sensor_sent_us;
    bool sent_since_boot;
    double step_done_t;
    bool reset_pending;
    uint32_t resets;

    /* watchdog */
    uint64_t fed_us;
    bool safe;

    /* actuators */
    double cap_w[UMB_BOARD_MAX_GPUS];
    uint32_t rails;

    /* sensors (the board's model, or the bench's latest values) */
    double temp_c[UMB_BOARD_MAX_GPUS], power_w[UMB_BOARD_MAX_GPUS], progress[UMB_BOARD_MAX_GPUS];
    double saved[UMB_BOARD_MAX_GPUS], demand_w[UMB_BOARD_MAX_GPUS];
    uint32_t xid[UMB_BOARD_MAX_GPUS];
    double solar_w, battery_soc, radiator_c, sink_c;
    double scalars[16];       /* external: as `plant.scalars` (docs/real-boards.md §6) */

    /* checkpoints (own model) */
    double ckpt_left_s[UMB_BOARD_MAX_GPUS], ckpt_from[UMB_BOARD_MAX_GPUS];
    uint32_t ckpt;

    /* the plant on the bench */
    bool external;
    bool waiting_plant;
    double due_t;
    uint32_t due_frames;
    uint32_t req_gen;
    uint32_t ckpt_gen[UMB_BOARD_MAX_GPUS], restore_gen[UMB_BOARD_MAX_GPUS], rail_gen[UMB_BOARD_MAX_GPUS];
    uint8_t rail_req[UMB_BOARD_MAX_GPUS]; /* 0 off, 1 on, 2 off then on (a power cycle) */
    double ckpt_req[UMB_BOARD_MAX_GPUS], restore_req[UMB_BOARD_MAX_GPUS];
    uint64_t due_sent_us;

    umb_msg rx_msg;
    umb_msg tx_msg;
} umb_board;

void umb_board_init(umb_board *b, const umb_board_config *cfg, umb_write_fn write, void *ctx, uint64_t now_us);
void umb_board_rx(umb_board *b, int port, const uint8_t *data, size_t n, uint64_t now_us);
void umb_board_poll(umb_board *b, uint64_t now_us);
uint32_t umb_board_rx_errors(const umb_board *b);

#endif
