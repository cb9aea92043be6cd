/* The main loop of every microcontroller port: bytes in, time on, bytes out. */
#include "mcu.h"
#include "umb_board.h"

#include <string.h>

static umb_board board;

static void write_port(void *ctx, int port, const uint8_t *data, size_t n)
{
    (void)ctx;
    hal_write(port, data, n);
}

int main(void)
{
    hal_init();
    umb_board_config cfg;
    umb_board_config_defaults(&cfg);
    const char *id = hal_board_id();
    size_t n = strlen(id);
    if (n > UMB_NAME_BYTES) n = UMB_NAME_BYTES;
    memcpy(cfg.board_id, id, n);
    cfg.board_id[n] = 0;
    umb_board_init(&board, &cfg, write_port, NULL, hal_now_us());
    for (;;) {
        int got = 0;
        for (int port = 0; port < 2; port++) {
            uint8_t byte;
            /* a bounded burst per port, so neither port starves the other or the clock */
            for (int k = 0; k < 64 && hal_read(port, &byte); k++, got++)
                umb_board_rx(&board, port, &byte, 1, hal_now_us());
        }
        umb_board_poll(&board, hal_now_us());
        if (!got) hal_idle();
    }
}
