/* ST NUCLEO-F401RE (STM32F401RE, Cortex-M4, 512 KB flash, 96 KB RAM), at its reset clock
 * (HSI, 16 MHz): no PLL to configure, no crystal needed.
 *
 *   main port: USART2, PA2 TX / PA3 RX, wired on the Nucleo to the ST-LINK's virtual COM
 *              port (the USB cable is the link: /dev/ttyACM0 on the node computer);
 *   HIL port:  USART1, PA9 TX (CN10 pin 21, Arduino D8) / PA10 RX (CN10 pin 33, D2), to a
 *              3.3 V USB-UART adapter on the bench PC (docs/real-boards.md §2).
 *
 * 115 200 8N1.  Bytes are received by interrupt into a ring per port, so the main loop may
 * take longer than a byte time (87 µs) encoding a SENSOR frame without an overrun. */
#include "mcu.h"

#define CPU_HZ 16000000u
#define RCC 0x40023800u
#define RCC_AHB1ENR REG32(RCC + 0x30u)
#define RCC_APB1ENR REG32(RCC + 0x40u)
#define RCC_APB2ENR REG32(RCC + 0x44u)
#define GPIOA 0x40020000u
#define GPIO_MODER REG32(GPIOA + 0x00u)
#define GPIO_PUPDR REG32(GPIOA + 0x0Cu)
#define GPIO_AFRL REG32(GPIOA + 0x20u)
#define GPIO_AFRH REG32(GPIOA + 0x24u)
#define USART1 0x40011000u
#define USART2 0x40004400u
#define USART_SR(b) REG32((b) + 0x00u)  /* bit 5 RXNE, bit 7 TXE, bit 3 ORE */
#define USART_DR(b) REG32((b) + 0x04u)
#define USART_BRR(b) REG32((b) + 0x08u)
#define USART_CR1(b) REG32((b) + 0x0Cu) /* bit 13 UE, bit 5 RXNEIE, bit 3 TE, bit 2 RE */
#define NVIC_ISER1 REG32(0xE000E104u)
#define IRQ_USART1 37u
#define IRQ_USART2 38u
#define UID 0x1FFF7A10u                /* the 96-bit unique device id */

void umb_systick_start(uint32_t cpu_hz);
uint64_t umb_systick_us(void);

static const uint32_t uarts[2] = {USART2, USART1};

/* 256 bytes a port (the 16 KB RAM budget, docs/real-boards.md §5.3): several commands' worth
 * while the loop is busy sending a SENSOR frame.  A byte that finds the ring full is lost and
 * counted; the frame it was in fails its CRC and the node's retry sends it again (ICD §2). */
#define RING_BYTES 256u
typedef struct { volatile uint16_t head, tail; uint8_t buf[RING_BYTES]; } ring;
static ring rings[2];
static volatile uint32_t overruns;

static void pin_af7(unsigned pin)
{
    GPIO_MODER = (GPIO_MODER & ~(3u << (2u * pin))) | (2u << (2u * pin)); /* alternate function */
    GPIO_PUPDR = (GPIO_PUPDR & ~(3u << (2u * pin))) | (1u << (2u * pin)); /* pull-up: idle high */
    volatile uint32_t *afr = pin < 8u ? &GPIO_AFRL : &GPIO_AFRH;
    unsigned shift = 4u * (pin % 8u);
    *afr = (*afr & ~(0xFu << shift)) | (7u << shift);
}

void hal_init(void)
{
    RCC_AHB1ENR |= 1u;        /* GPIOA */
    RCC_APB1ENR |= 1u << 17;  /* USART2 */
    RCC_APB2ENR |= 1u << 4;   /* USART1 */
    pin_af7(2);
    pin_af7(3);
    pin_af7(9);
    pin_af7(10);
    for (int i = 0; i < 2; i++) {
        USART_BRR(uarts[i]) = (CPU_HZ + 115200u / 2u) / 115200u; /* 16 MHz / 115 200 = 138.9 */
        USART_CR1(uarts[i]) = (1u << 13) | (1u << 5) | (1u << 3) | (1u << 2);
    }
    NVIC_ISER1 = (1u << (IRQ_USART1 - 32u)) | (1u << (IRQ_USART2 - 32u));
    umb_systick_start(CPU_HZ);
}

/* Called by the vector table for every external interrupt (ports/common/cortexm_startup.c). */
void umb_port_irq(unsigned irq)
{
    int port = irq == IRQ_USART2 ? 0 : irq == IRQ_USART1 ? 1 : -1;
    if (port < 0) return;
    uint32_t b = uarts[port];
    uint32_t sr = USART_SR(b);
    if (sr & ((1u << 5) | (1u << 3))) {
        uint8_t byte = (uint8_t)USART_DR(b); /* reading DR clears RXNE and ORE */
        if (sr & (1u << 3)) overruns++;
        ring *r = &rings[port];
        uint16_t next = (uint16_t)((r->head + 1u) % sizeof r->buf);
        if (next != r->tail) {
            r->buf[r->head] = byte;
            r->head = next;
        } /* a full ring drops the byte: the frame fails its CRC and is retransmitted */
    }
}

uint64_t hal_now_us(void) { return umb_systick_us(); }

/* Until a byte or the next SysTick (1 ms); masked, so a byte between check and WFI wakes it. */
void hal_idle(void)
{
    __asm__ volatile("cpsid i" ::: "memory");
    if (rings[0].head == rings[0].tail && rings[1].head == rings[1].tail) __asm__ volatile("wfi");
    __asm__ volatile("cpsie i" ::: "memory");
}

bool hal_read(int port, uint8_t *byte)
{
    ring *r = &rings[port];
    if (r->tail == r->head) return false;
    *byte = r->buf[r->tail];
    r->tail = (uint16_t)((r->tail + 1u) % sizeof r->buf);
    return true;
}

void hal_write(int port, const uint8_t *data, size_t n)
{
    uint32_t b = uarts[port];
    for (size_t i = 0; i < n; i++) {
        while (!(USART_SR(b) & (1u << 7))) {
        }
        USART_DR(b) = data[i];
    }
}

const char *hal_board_id(void)
{
    static char id[32];
    static const char hex[] = "0123456789abcdef";
    const char prefix[] = "nucleo-f401re-";
    unsigned n = 0;
    for (; prefix[n]; n++) id[n] = prefix[n];
    for (unsigned i = 0; i < 6u; i++) { /* the low 6 bytes of the unique id: 12 hex digits */
        uint8_t byte = *(volatile uint8_t *)(UID + i);
        id[n++] = hex[byte >> 4];
        id[n++] = hex[byte & 0xFu];
    }
    id[n] = 0;
    return id;
}
