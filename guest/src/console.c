/* COM1 16550 UART, polled. Output is rare (markers, one tick line a second),
 * so no interrupt-driven buffering: each byte waits for the transmit holding
 * register, which under QEMU and vmmd is always empty at once. */
#include "console.h"
#include "io.h"
#include "power.h"
#include <stdio.h>

#define COM1 0x3f8

void console_init(void)
{
    outb(COM1 + 1, 0x00);   /* no UART interrupts */
    outb(COM1 + 3, 0x80);   /* DLAB on */
    outb(COM1 + 0, 0x01);   /* divisor 1: 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);   /* 8N1, DLAB off */
    outb(COM1 + 2, 0xC7);   /* FIFO on, cleared */
    outb(COM1 + 4, 0x03);   /* DTR, RTS */
}

static void putc_raw(char c)
{
    /* Bounded wait: a missing UART must not hang the guest. */
    for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++)
        ;
    outb(COM1, (uint8_t)c);
}

void console_write(const char *s, unsigned long n)
{
    for (unsigned long i = 0; i < n; i++) {
        if (s[i] == '\n')
            putc_raw('\r');
        putc_raw(s[i]);
    }
}

void vkprintf(const char *fmt, va_list ap)
{
    char buf[256];
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    if (n > (int)sizeof buf - 1)
        n = sizeof buf - 1;
    console_write(buf, n);
}

void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vkprintf(fmt, ap);
    va_end(ap);
}

void fatal(const char *fmt, ...)
{
    va_list ap;
    kprintf("COLO-GUEST ERROR: ");
    va_start(ap, fmt);
    vkprintf(fmt, ap);
    va_end(ap);
    kprintf("\n");
    power_off();
}
