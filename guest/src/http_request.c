/* HTTP/1.x request head parser (see http_request.h). Strict where framing
 * depends on it (request line, header syntax, Content-Length,
 * Transfer-Encoding), lenient about line endings (bare "\n" accepted). */
#include "http_request.h"
#include <string.h>

int http_head_length(const char *buf, int len)
{
    for (int i = 0; i < len; i++) {
        if (buf[i] != '\n')
            continue;
        if (i + 1 < len && buf[i + 1] == '\n')
            return i + 2;
        if (i + 2 < len && buf[i + 1] == '\r' && buf[i + 2] == '\n')
            return i + 3;
    }
    return -1;
}

/* RFC 9110 token characters (method and header names). */
static int is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != 0;
}

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

static int equals_ignoring_case(const char *s, int n, const char *word)
{
    int i = 0;
    for (; i < n && word[i]; i++)
        if (lower((unsigned char)s[i]) != word[i])
            return 0;
    return i == n && !word[i];
}

static void trim(const char **s, int *n)
{
    while (*n && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*n)--;
    }
    while (*n && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
        (*n)--;
}

/* One line without its ending: [start, start+len). */
struct line { const char *s; int n; };

/* The next line from *pos in buf[0..end); 0 when the line has a stray '\r'. */
static int next_line(const char *buf, int end, int *pos, struct line *l)
{
    int i = *pos;
    while (i < end && buf[i] != '\n')
        i++;
    l->s = buf + *pos;
    l->n = i - *pos;
    if (l->n && l->s[l->n - 1] == '\r')
        l->n--;
    *pos = i + 1;
    return memchr(l->s, '\r', (size_t)l->n) == 0;
}

static enum http_request_error parse_request_line(struct line l, struct http_request *req)
{
    int i = 0;
    while (i < l.n && is_tchar((unsigned char)l.s[i]))
        i++;
    if (i == 0 || i > 16 || i >= l.n || l.s[i] != ' ')
        return HTTP_REQUEST_BAD_LINE;
    req->is_head = i == 4 && memcmp(l.s, "HEAD", 4) == 0;
    int target = ++i;
    while (i < l.n && (unsigned char)l.s[i] > ' ' && l.s[i] != 0x7f)
        i++;
    if (i == target || i >= l.n || l.s[i] != ' ')
        return HTTP_REQUEST_BAD_LINE;
    const char *v = l.s + i + 1;
    int vn = l.n - i - 1;
    if (vn < 5 || memcmp(v, "HTTP/", 5) != 0)
        return HTTP_REQUEST_BAD_LINE;
    if (vn != 8 || v[5] != '1' || v[6] != '.' || v[7] < '0' || v[7] > '9')
        return HTTP_REQUEST_BAD_VERSION;
    req->minor = (uint8_t)(v[7] - '0');
    return HTTP_REQUEST_OK;
}

/* "Connection: a, b": sets *close / *keep for the tokens we know. */
static void connection_tokens(const char *s, int n, int *close, int *keep)
{
    while (n > 0) {
        int k = 0;
        while (k < n && s[k] != ',')
            k++;
        const char *t = s;
        int tn = k;
        trim(&t, &tn);
        if (equals_ignoring_case(t, tn, "close"))
            *close = 1;
        else if (equals_ignoring_case(t, tn, "keep-alive"))
            *keep = 1;
        s += k + (k < n);
        n -= k + (k < n);
    }
}

static int parse_length(const char *s, int n, uint32_t *out)
{
    if (n == 0 || n > 10)
        return 0;
    uint64_t v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > HTTP_BODY_MAX)
        return 0;
    *out = (uint32_t)v;
    return 1;
}

enum http_request_error http_request_parse(const char *buf, int len, struct http_request *req)
{
    memset(req, 0, sizeof *req);
    int pos = 0, close = 0, keep = 0, have_length = 0;
    struct line l;
    if (!next_line(buf, len, &pos, &l))
        return HTTP_REQUEST_BAD_LINE;
    enum http_request_error e = parse_request_line(l, req);
    if (e != HTTP_REQUEST_OK)
        return e;
    while (pos < len) {
        if (!next_line(buf, len, &pos, &l))
            return HTTP_REQUEST_BAD_HEADER;
        if (l.n == 0)
            break;                                  /* the empty line: end of the head */
        int colon = 0;
        while (colon < l.n && is_tchar((unsigned char)l.s[colon]))
            colon++;
        if (colon == 0 || colon == l.n || l.s[colon] != ':')
            return HTTP_REQUEST_BAD_HEADER;         /* also a folded line (leading space) */
        const char *v = l.s + colon + 1;
        int vn = l.n - colon - 1;
        for (int i = 0; i < vn; i++) {
            unsigned char c = (unsigned char)v[i];
            if ((c < ' ' && c != '\t') || c == 0x7f)
                return HTTP_REQUEST_BAD_HEADER;
        }
        trim(&v, &vn);
        if (equals_ignoring_case(l.s, colon, "connection")) {
            connection_tokens(v, vn, &close, &keep);
        } else if (equals_ignoring_case(l.s, colon, "content-length")) {
            uint32_t n;
            if (!parse_length(v, vn, &n) || (have_length && n != req->content_length))
                return HTTP_REQUEST_BAD_LENGTH;
            req->content_length = n;
            have_length = 1;
        } else if (equals_ignoring_case(l.s, colon, "transfer-encoding")) {
            return HTTP_REQUEST_TRANSFER_ENCODING;
        }
    }
    req->keep_alive = !close && (req->minor >= 1 || keep);
    return HTTP_REQUEST_OK;
}

const char *http_request_error_text(enum http_request_error e)
{
    switch (e) {
    case HTTP_REQUEST_OK: return "ok";
    case HTTP_REQUEST_BAD_LINE: return "bad request line";
    case HTTP_REQUEST_BAD_VERSION: return "unsupported HTTP version";
    case HTTP_REQUEST_BAD_HEADER: return "bad header line";
    case HTTP_REQUEST_BAD_LENGTH: return "bad Content-Length";
    case HTTP_REQUEST_TRANSFER_ENCODING: return "Transfer-Encoding not supported";
    case HTTP_REQUEST_TOO_LARGE: return "request head too large";
    }
    return "bad request";
}
