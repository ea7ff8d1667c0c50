/* libFuzzer harness for the test guest's HTTP request parser
 * (guest/src/http_request.c), built for the host by scripts/fuzz-guest-http.sh.
 * Feeds the input to http_head_length and, for a complete head, to
 * http_request_parse, and checks what the server (guest/src/http.c) relies
 * on: the head length lies inside the input, an accepted request has a sane
 * version, body length and keep-alive decision, and every error has a text.
 * Address and undefined-behaviour sanitizers catch out-of-bounds reads. */
#define _GNU_SOURCE             /* memmem */
#include "http_request.h"
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    /* An exact-size heap copy: any read past the end is a sanitizer report. */
    char *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    int len = (int)size;
    int head = http_head_length(buf, len);
    if (head != -1 && (head < 2 || head > len || buf[head - 1] != '\n'))
        abort();
    if (head > 0) {
        struct http_request req;
        enum http_request_error e = http_request_parse(buf, head, &req);
        const char *text = http_request_error_text(e);
        if (!text || !*text)
            abort();
        if (e == HTTP_REQUEST_OK) {
            if (req.minor > 9 || req.content_length > HTTP_BODY_MAX || req.keep_alive > 1)
                abort();
            if (memmem(buf, (size_t)head, "HTTP/1.", 7) == NULL)
                abort();
        }
    }
    free(buf);
    return 0;
}
