/* One HTTP/1.x request head (request line and header lines up to the empty
 * line), parsed without any state or lwIP, so that the server (http.c) only
 * deals with connections and the parser can be tested and fuzzed on the host
 * (Tests/system/test_guest_http_parser.py). */
#pragma once
#include <stdint.h>

enum http_request_error {
    HTTP_REQUEST_OK = 0,
    HTTP_REQUEST_BAD_LINE,          /* not "METHOD SP TARGET SP HTTP/1.x" */
    HTTP_REQUEST_BAD_VERSION,       /* HTTP/ but not 1.x */
    HTTP_REQUEST_BAD_HEADER,        /* no "name:", control bytes, folded line */
    HTTP_REQUEST_BAD_LENGTH,        /* Content-Length not decimal, too big, or conflicting */
    HTTP_REQUEST_TRANSFER_ENCODING, /* chunked bodies are not supported */
    HTTP_REQUEST_TOO_LARGE,         /* no end of the head within the buffer (set by the caller) */
};

/* Largest Content-Length accepted (the body is read and dropped). */
#define HTTP_BODY_MAX 1000000000u

struct http_request {
    uint8_t minor;              /* HTTP/1.<minor>: 0 or more */
    uint8_t is_head;            /* method HEAD: the reply has no body */
    uint8_t keep_alive;         /* the connection stays open after the reply */
    uint32_t content_length;    /* body bytes following the head */
};

/* Length of the head at the start of buf[0..len), up to and including the
 * empty line ("\r\n\r\n" or "\n\n", mixed endings accepted), or -1 when the
 * empty line has not arrived yet. */
int http_head_length(const char *buf, int len);

/* Parses the head buf[0..len) (len from http_head_length). Keep-alive:
 * HTTP/1.1 and later unless "Connection: close"; HTTP/1.0 only with
 * "Connection: keep-alive" (and no "close"). */
enum http_request_error http_request_parse(const char *buf, int len, struct http_request *req);

/* A short text for the error, shown in the 400 reply's body. */
const char *http_request_error_text(enum http_request_error e);
