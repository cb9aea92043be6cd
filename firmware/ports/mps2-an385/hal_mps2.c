/* QEMU mps2-an385 (Cortex-M3): CMSDK APB UART0 = main port, UART1 = HIL port, SysTick at
 * the 25 MHz system clock.  QEMU holds a byte back until the UART has room for it, so
 * polling the receivers loses nothing.  Their RX interrupts only wake the core from WFI
 * (hal_idle): an idle board sleeps instead of spinning a host core. */
#include "mcu.h"

#define CPU_HZ 25000000u
#define UART0 0x40004000u
#define UART1 0x40005000u
#define UART_DATA(b) REG32((b) + 0x000u)
#define UART_STATE(b) REG32((b) + 0x004u) /* bit 0 TX full, bit 1 RX full */
#define UART_CTRL(b) REG32((b) + 0x008u)  /* bit 0 TX enable, bit 1 RX enable */
#define UART_INTCLEAR(b) REG32((b) + 0x00Cu) /* bit 1: RX interrupt */
#define UART_BAUDDIV(b) REG32((b) + 0x010u)
#define NVIC_ISER0 REG32(0xE000E100u)
#define IRQ_UART0_RX 0u
#define IRQ_UART1_RX 2u

void umb_systick_start(uint32_t cpu_hz);
uint64_t umb_systick_us(void);

static const uint32_t uarts[2] = {UART0, UART1};

void hal_init(void)
{
    for (int i = 0; i < 2; i++) {
        UART_BAUDDIV(uarts[i]) = CPU_HZ / 115200u;
        UART_CTRL(uarts[i]) = 3u | (1u << 3); /* TX, RX, RX interrupt */
    }
    NVIC_ISER0 = (1u << IRQ_UART0_RX) | (1u << IRQ_UART1_RX);
    umb_systick_start(CPU_HZ);
}

/* The byte stays in the data register for hal_read; the interrupt only ends a WFI. */
void umb_port_irq(unsigned irq)
{
    if (irq == IRQ_UART0_RX) UART_INTCLEAR(UART0) = 2u;
    else if (irq == IRQ_UART1_RX) UART_INTCLEAR(UART1) = 2u;
}

/* Until a byte or the next SysTick (1 ms).  With interrupts masked a byte that lands between
 * the check and the WFI still ends the WFI (a pending interrupt wakes the core). */
void hal_idle(void)
{
    __asm__ volatile("cpsid i" ::: "memory");
    if (!((UART_STATE(UART0) | UART_STATE(UART1)) & 2u)) __asm__ volatile("wfi");
    __asm__ volatile("cpsie i" ::: "memory");
}

uint64_t hal_now_us(void) { return umb_systick_us(); }

bool hal_read(int port, uint8_t *byte)
{
    uint32_t b = uarts[port];
    if (!(UART_STATE(b) & 2u)) return false;
    *byte = (uint8_t)UART_DATA(b);
    return true;
}

void hal_write(int port, const uint8_t *data, size_t n)
{
    uint32_t b = uarts[port];
    for (size_t i = 0; i < n; i++) {
        while (UART_STATE(b) & 1u) {
        }
        UART_DATA(b) = data[i];
    }
}

const char *hal_board_id(void) { return "qemu-mps2-an385"; }
