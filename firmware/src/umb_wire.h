/* Umbra board firmware: the wire layer (docs/ICD.md §1.3, §2): CRC-32, COBS, the msgpack
 * subset the ICD uses.  Portable C11, no heap, no libc beyond <string.h>.  */
#ifndef UMB_WIRE_H
#define UMB_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define UMB_PROTOCOL_VERSION 1u
#define UMB_MAX_BODY 4096u
#define UMB_MAX_ENCODED 4117u
#define UMB_MAX_GPUS 32u
#define UMB_MAX_NAME 32u         /* code points in a name (ICD §1.4) */
#define UMB_NAME_BYTES 128u      /* its UTF-8 bytes, at most */
#define UMB_UINT32_MAX 0xFFFFFFFFu
/* Containers nested deeper than this in a body are refused (reason decode); ICD §1.3. */
#define UMB_MAX_DEPTH 32u

uint32_t umb_crc32(uint32_t crc, const uint8_t *data, size_t n);

/* --- msgpack reading -------------------------------------------------------------------- */

enum umb_mp_type {
    UMB_MP_NIL, UMB_MP_BOOL, UMB_MP_UINT, UMB_MP_NINT, UMB_MP_F32, UMB_MP_F64,
    UMB_MP_STR, UMB_MP_BIN, UMB_MP_ARRAY, UMB_MP_MAP, UMB_MP_EXT,
};

typedef struct {
    uint8_t type;        /* enum umb_mp_type */
    bool b;
    uint64_t u;          /* UINT: the value; NINT: the two's complement of a negative int */
    double f;            /* F32 (widened) and F64 */
    uint32_t n;          /* STR/BIN/EXT: bytes; ARRAY: items; MAP: pairs */
    const uint8_t *ptr;  /* STR/BIN/EXT: the bytes */
    int8_t ext_type;
} umb_mp_item;

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} umb_reader;

/* Reads one item's header (and, for STR/BIN/EXT, steps over its bytes).  false: truncated
 * or a reserved byte (0xc1). */
bool umb_mp_read(umb_reader *r, umb_mp_item *item);
/* Steps over one whole value (already validated by umb_mp_validate). */
bool umb_mp_skip(umb_reader *r);
/* true when [p, p+n) is exactly one msgpack value whose map keys are all str or bin, whose
 * strings are valid UTF-8, whose timestamps are well formed, nested at most UMB_MAX_DEPTH. */
bool umb_mp_validate(const uint8_t *p, size_t n);
/* UTF-8 check; *points receives the number of code points; *printable whether every code
 * point is printable (ICD §1.4; unassigned code points are taken as printable). */
bool umb_utf8(const uint8_t *s, size_t n, uint32_t *points, bool *printable);

/* --- msgpack writing -------------------------------------------------------------------- */

typedef struct {
    uint8_t *buf;
    size_t cap;
    size_t len;
    bool overflow;
} umb_writer;

void umb_mp_uint(umb_writer *w, uint64_t v);
void umb_mp_f64(umb_writer *w, double v);
void umb_mp_bool(umb_writer *w, bool v);
void umb_mp_str(umb_writer *w, const char *s, size_t n);
void umb_mp_array(umb_writer *w, uint32_t n);
void umb_mp_map(umb_writer *w, uint32_t n);

/* --- frames ----------------------------------------------------------------------------- */

typedef void (*umb_put_fn)(void *ctx, const uint8_t *data, size_t n);

/* Writes COBS(body ‖ CRC-32 LE) and the 0x00 delimiter through put, in pieces of at most
 * 255 bytes (no frame buffer needed). */
void umb_frame_write(const uint8_t *body, size_t n, umb_put_fn put, void *ctx);

#endif
