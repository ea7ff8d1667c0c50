/* Formatting into buffers (libc/printf.c); console output is in console.h. */
#pragma once
#include <stddef.h>
#include <stdarg.h>
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
