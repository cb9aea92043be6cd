/* Umbra board firmware: the serial link's messages (docs/ICD.md §4) and frame decoding
 * (§2.8), table-driven: one field table per type gives decoding, checking and encoding. */
#ifndef UMB_MSG_H
#define UMB_MSG_H

#include "umb_wire.h"

enum umb_type {
    UMB_HELLO = 0x01, UMB_HELLO_ACK = 0x02, UMB_HEARTBEAT = 0x03, UMB_STEP_DONE = 0x04,
    UMB_SENSOR = 0x10, UMB_SET_CAPS = 0x20, UMB_SET_RAIL = 0x21, UMB_RESET_BOARD = 0x22,
    UMB_CHECKPOINT = 0x23, UMB_RESTORE = 0x24, UMB_ACK = 0x30, UMB_HIL_SET = 0x40,
    UMB_HIL_GET = 0x41, UMB_HIL_VALUE = 0x42,
};

enum umb_ack_status { UMB_OK = 0, UMB_BAD_ARGUMENT = 1, UMB_UNSUPPORTED = 2, UMB_BUSY = 3 };
enum umb_sensor_flag { UMB_FLAG_WATCHDOG_SAFE = 1u, UMB_FLAG_ECLIPSE = 2u, UMB_FLAG_HW_SLOWDOWN = 4u };
enum umb_feature { UMB_FEATURE_CHECKPOINTS = 1u, UMB_FEATURE_LOCKSTEP = 2u };

/* Why a frame was rejected (§2.8); UMB_R_NONE: it was not. */
enum umb_reason {
    UMB_R_NONE = 0, UMB_R_OVERSIZE, UMB_R_COBS, UMB_R_DECODE, UMB_R_CRC, UMB_R_VERSION,
    UMB_R_UNKNOWN_TYPE, UMB_R_INVALID_VALUE,
};
const char *umb_reason_name(int reason);

/* Array values kept per array.  Arrays up to UMB_MAX_GPUS elements are decoded and checked
 * whole, and `n` is their true length; a firmware that serves fewer GPUs may keep fewer
 * values (it refuses longer arrays by their length anyway) to save RAM. */
#ifndef UMB_ARRAY_CAP
#define UMB_ARRAY_CAP UMB_MAX_GPUS
#endif

typedef struct { uint8_t len; char s[UMB_NAME_BYTES + 1]; } umb_str;           /* NUL-ended */
typedef struct { uint8_t n; double v[UMB_ARRAY_CAP]; } umb_farr;
typedef struct { uint8_t n; uint32_t v[UMB_ARRAY_CAP]; } umb_iarr;
typedef struct { uint8_t n; bool is_array; double v[UMB_ARRAY_CAP]; } umb_hilnum; /* n = 1 for a float */

typedef struct { umb_str node_id; uint32_t min_version, max_version; } umb_hello;
typedef struct {
    uint32_t version, min_version, max_version;
    umb_str board_id, fw_version;
    uint32_t gpu_count;
    double cap_min_w, cap_max_w, sensor_rate_hz, watchdog_s;
    uint32_t features;
} umb_hello_ack;
typedef struct { double uptime_s; } umb_heartbeat;
typedef struct { double t_board; } umb_step_done;
typedef struct {
    double t_board, utc;
    umb_farr temp_c, power_w, cap_w, progress;
    uint32_t rails;
    double solar_w, battery_soc, radiator_c;
    uint32_t flags, rx_errors;
    double battery_wh, battery_capacity_wh, bus_v, avionics_w, orbit_period_s, eclipse_in_s, sun_in_s;
    umb_iarr xid;
    uint32_t gpu_ok, slowdown;
    umb_farr saved;
    uint32_t ckpt;
} umb_sensor;
typedef struct { umb_farr cap_w; } umb_set_caps;
typedef struct { uint32_t gpu; bool on; } umb_set_rail;
typedef struct { uint32_t gpu; double pause_s; } umb_checkpoint;
typedef struct { uint32_t gpu; double progress; } umb_restore;
typedef struct { uint32_t ack_seq, status; } umb_ack;
typedef struct { umb_str name; umb_hilnum value; } umb_hil_set;
typedef struct { umb_str name; } umb_hil_get;
typedef struct { umb_str name; umb_hilnum value; uint32_t ref; } umb_hil_value;

typedef struct {
    uint8_t type;
    uint32_t seq;
    union {
        umb_hello hello;
        umb_hello_ack hello_ack;
        umb_heartbeat heartbeat;
        umb_step_done step_done;
        umb_sensor sensor;
        umb_set_caps set_caps;
        umb_set_rail set_rail;
        umb_checkpoint checkpoint;
        umb_restore restore;
        umb_ack ack;
        umb_hil_set hil_set;
        umb_hil_get hil_get;
        umb_hil_value hil_value;
    } u;
} umb_msg;

bool umb_type_known(unsigned type);
bool umb_type_reliable(unsigned type);
/* Fills every field that has a default (§4) and zeroes the rest. */
void umb_msg_defaults(umb_msg *m, unsigned type);
/* Decodes a body (msgpack, CRC already checked): steps 6-13 of §2.8. */
int umb_decode_body(const uint8_t *body, size_t n, umb_msg *out);
/* Encodes the body [1, type, seq, payload] canonically (§1.3); 0 if it does not fit. */
size_t umb_encode_body(const umb_msg *m, uint8_t *buf, size_t cap);
/* Sets a name from a C string (truncated to UMB_NAME_BYTES). */
void umb_str_set(umb_str *dst, const char *s);
bool umb_str_eq(const umb_str *a, const char *s);

/* --- the stream decoder of one port (§2.7, §2.9) ------------------------------------------ */

typedef struct {
    uint32_t frames, bytes_dropped, crc_errors, oversize, decode_errors;
} umb_rx_stats;

typedef struct {
    uint8_t buf[UMB_MAX_BODY + 4u];
    uint32_t enc_len;   /* encoded bytes of the frame so far */
    uint32_t dec_len;   /* decoded bytes (may exceed the buffer: then oversize) */
    uint8_t block_left; /* data bytes left in the current COBS block */
    bool zero_due;      /* the current block ends with an implied zero */
    bool in_oversize;   /* discarding an oversize run */
    umb_rx_stats stats;
    int last_reason;    /* reason of the last rejected frame */
} umb_rx;

void umb_rx_reset(umb_rx *rx);
/* Feeds one byte; returns true when a valid frame is complete in *out. */
bool umb_rx_byte(umb_rx *rx, uint8_t byte, umb_msg *out);
/* Decodes one frame's bytes without its delimiter (§2.8 steps 1-13). */
int umb_decode_frame(const uint8_t *encoded, size_t n, umb_msg *out);

#endif
