/* What a microcontroller port provides to the common main loop (ports/common/mcu_main.c):
 * the HAL of docs/real-boards.md §5.1 — two UARTs and a microsecond clock. */
#ifndef UMB_MCU_H
#define UMB_MCU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

void hal_init(void);
uint64_t hal_now_us(void);
/* One received byte of a port (0 main, 1 HIL), if any. */
bool hal_read(int port, uint8_t *byte);
void hal_write(int port, const uint8_t *data, size_t n);
/* Nothing arrived in a whole pass: sleep until an interrupt (a byte, or the 1 ms tick). */
void hal_idle(void);
/* The board's identity (a unique id where the chip has one). */
const char *hal_board_id(void);

#define REG32(addr) (*(volatile uint32_t *)(addr))

#endif
