/* lwIP's netif.c includes <stdlib.h> for atoi (only with netif names by index). */
#pragma once
#include <stddef.h>
int atoi(const char *s);
