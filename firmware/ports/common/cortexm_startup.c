/* Cortex-M startup shared by the ports: the vector table, .data/.bss set-up, SysTick. */
#include <stdint.h>
#include <string.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern int main(void);
void SysTick_Handler(void);
void Default_Handler(void);
void Reset_Handler(void);
void umb_port_irq(unsigned irq) __attribute__((weak));

void Default_Handler(void)
{
    for (;;) {
    }
}

void umb_port_irq(unsigned irq) { (void)irq; }

/* External interrupts 0…31 go to the port's umb_port_irq(n). */
#define IRQ(n) static void irq##n(void) { umb_port_irq(n); }
IRQ(0) IRQ(1) IRQ(2) IRQ(3) IRQ(4) IRQ(5) IRQ(6) IRQ(7) IRQ(8) IRQ(9) IRQ(10) IRQ(11) IRQ(12)
IRQ(13) IRQ(14) IRQ(15) IRQ(16) IRQ(17) IRQ(18) IRQ(19) IRQ(20) IRQ(21) IRQ(22) IRQ(23) IRQ(24)
IRQ(25) IRQ(26) IRQ(27) IRQ(28) IRQ(29) IRQ(30) IRQ(31) IRQ(32) IRQ(33) IRQ(34) IRQ(35) IRQ(36)
IRQ(37) IRQ(38) IRQ(39) IRQ(40) IRQ(41) IRQ(42) IRQ(43) IRQ(44) IRQ(45) IRQ(46) IRQ(47)

__attribute__((section(".isr_vector"), used)) static void (*const vectors[16 + 48])(void) = {
    (void (*)(void))(&_estack), Reset_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, 0, 0, 0, 0, Default_Handler, Default_Handler, 0,
    Default_Handler, SysTick_Handler,
    irq0, irq1, irq2, irq3, irq4, irq5, irq6, irq7, irq8, irq9, irq10, irq11, irq12, irq13, irq14,
    irq15, irq16, irq17, irq18, irq19, irq20, irq21, irq22, irq23, irq24, irq25, irq26, irq27,
    irq28, irq29, irq30, irq31, irq32, irq33, irq34, irq35, irq36, irq37, irq38, irq39, irq40,
    irq41, irq42, irq43, irq44, irq45, irq46, irq47,
};

void Reset_Handler(void)
{
    memcpy(&_sdata, &_sidata, (size_t)((char *)&_edata - (char *)&_sdata));
    memset(&_sbss, 0, (size_t)((char *)&_ebss - (char *)&_sbss));
    main();
    for (;;) {
    }
}

/* --- SysTick: a millisecond counter, read with the counter's sub-millisecond part ---------- */

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

static volatile uint32_t ms_ticks;
static uint32_t ticks_per_ms;

void SysTick_Handler(void) { ms_ticks++; }

void umb_systick_start(uint32_t cpu_hz)
{
    ticks_per_ms = cpu_hz / 1000u;
    SYST_RVR = ticks_per_ms - 1u;
    SYST_CVR = 0;
    SYST_CSR = 7u; /* processor clock, interrupt, enable */
}

/* Monotonic by construction: the counter may have wrapped with its interrupt still pending
 * (late, as under QEMU on a busy host), which would read as a step back of up to 1 ms; a
 * pending tick is counted, and no reading is ever below the one before, because the board
 * subtracts times without signs (a step back would look like hours of silence). */
#define ICSR (*(volatile uint32_t *)0xE000ED04u)
#define ICSR_PENDSTSET (1u << 26)
static uint64_t last_us;

uint64_t umb_systick_us(void)
{
    uint32_t ms, val, pending;
    do { /* a tick between the reads: read again */
        ms = ms_ticks;
        val = SYST_CVR;
        pending = ICSR & ICSR_PENDSTSET;
    } while (ms != ms_ticks);
    uint32_t sub = (ticks_per_ms - 1u - val) * 1000u / ticks_per_ms;
    uint64_t us = (uint64_t)(ms + (pending ? 1u : 0u)) * 1000u + sub;
    if (us < last_us) us = last_us;
    last_us = us;
    return us;
}
