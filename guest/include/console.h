/* Serial console on COM1 (0x3f8), polled output. Every line a test waits for
 * starts with "COLO-GUEST " (see README.md). */
#pragma once
#include <stdarg.h>
void console_init(void);
void console_write(const char *s, unsigned long n);
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void vkprintf(const char *fmt, va_list ap);
/* Prints "COLO-GUEST ERROR: <msg>" and powers off: never returns. */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
