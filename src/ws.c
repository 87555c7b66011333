/*-------------------------------------------------------------------------
 *
 * ws.c
 *	  A WebSocket client over libwebsockets, for the Gateway worker.
 *
 * Owns the libwebsockets context and connection of one client session:
 * connecting to a ws:// or wss:// URL (TLS verified against the system's
 * certificate store), reassembling fragmented text messages into a queue,
 * writing queued messages when the socket is writable, the close handshake
 * and the close code the server sent.  Framing, masking, TLS and the HTTP
 * upgrade are libwebsockets' job.
 *
 * Nothing here knows PostgreSQL or the Gateway protocol, and nothing here
 * may raise: libwebsockets' callbacks only move bytes into and out of
 * plain malloc'd queues, which the caller reads after lhd_ws_service()
 * returns.  lhd_ws_service() waits at most the time it is given (a timer of
 * the context bounds libwebsockets' poll), and a signal interrupts it, so
 * the caller's loop stays responsive to SIGTERM, reloads and postmaster
 * death.
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>

#include "lhd_ws.h"

typedef struct WsMessage
{
	struct WsMessage *next;
	size_t		len;
	char		data[];
} WsMessage;

struct LhdWs
{
	struct lws_context *context;
	struct lws *wsi;
	LhdWsState state;
	size_t		max_message;

	/* Received: a message being reassembled, and the complete ones. */
	char	   *partial;
	size_t		partial_len;
	size_t		partial_cap;
	bool		partial_binary;
	WsMessage  *in_head;
	WsMessage  *in_tail;

	/* To send, in order. */
	WsMessage  *out_head;
	WsMessage  *out_tail;
	int			out_count;

	/* Closing. */
	int			close_wanted;	/* our close code, 0 = none */
	int			close_code;		/* the server's */
	char		close_reason[124];
	char		error[256];

	lws_sorted_usec_list_t wake;	/* bounds one service call */
};

static LhdWsLogFn log_fn = NULL;

static void
emit_log(int level, const char *line)
{
	char		buf[512];
	size_t		n;

	if (log_fn == NULL)
		return;
	/* libwebsockets' lines end with a newline. */
	snprintf(buf, sizeof(buf), "%s", line);
	n = strlen(buf);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = '\0';
	log_fn(buf);
}

static WsMessage *
message_new(const char *data, size_t len)
{
	WsMessage  *m = malloc(offsetof(WsMessage, data) + len + 1);

	if (m == NULL)
		return NULL;
	m->next = NULL;
	m->len = len;
	memcpy(m->data, data, len);
	m->data[len] = '\0';
	return m;
}

static void
queue_free(WsMessage **head, WsMessage **tail)
{
	while (*head != NULL)
	{
		WsMessage  *next = (*head)->next;

		explicit_bzero((*head)->data, (*head)->len);
		free(*head);
		*head = next;
	}
	*tail = NULL;
}

/* Append received bytes to the message being reassembled; false when too long. */
static bool
partial_append(LhdWs *ws, const void *in, size_t len)
{
	if (ws->partial_len + len > ws->max_message)
		return false;
	if (ws->partial_len + len > ws->partial_cap)
	{
		size_t		cap = ws->partial_cap ? ws->partial_cap : 4096;
		char	   *p;

		while (cap < ws->partial_len + len)
			cap *= 2;
		if (cap > ws->max_message)
			cap = ws->max_message;
		p = realloc(ws->partial, cap);
		if (p == NULL)
			return false;
		ws->partial = p;
		ws->partial_cap = cap;
	}
	memcpy(ws->partial + ws->partial_len, in, len);
	ws->partial_len += len;
	return true;
}

static void
set_error(LhdWs *ws, const char *what, const void *in, size_t len)
{
	if (in != NULL && len > 0)
		snprintf(ws->error, sizeof(ws->error), "%s: %.*s", what, (int) len, (const char *) in);
	else
		snprintf(ws->error, sizeof(ws->error), "%s", what);
}

static int
client_callback(struct lws *wsi, enum lws_callback_reasons reason,
				void *user, void *in, size_t len)
{
	LhdWs	   *ws = (LhdWs *) user;

	if (ws == NULL)
		return 0;
	switch (reason)
	{
		case LWS_CALLBACK_CLIENT_ESTABLISHED:
			ws->state = LHD_WS_OPEN;
			if (ws->out_head != NULL || ws->close_wanted)
				lws_callback_on_writable(wsi);
			break;

		case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
			set_error(ws, "connection failed", in, in ? strlen(in) : 0);
			ws->state = LHD_WS_CLOSED;
			ws->wsi = NULL;
			break;

		case LWS_CALLBACK_CLIENT_RECEIVE:
			if (lws_is_first_fragment(wsi))
			{
				ws->partial_len = 0;
				ws->partial_binary = lws_frame_is_binary(wsi);
			}
			if (!partial_append(ws, in, len))
			{
				static const char why[] = "message too big";

				lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE,
								 (unsigned char *) why, sizeof(why) - 1);
				set_error(ws, "a message exceeded the size limit", NULL, 0);
				return -1;
			}
			if (lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0)
			{
				WsMessage  *m;

				/* The Gateway speaks text (JSON); a binary frame is dropped. */
				if (!ws->partial_binary &&
					(m = message_new(ws->partial, ws->partial_len)) != NULL)
				{
					if (ws->in_tail)
						ws->in_tail->next = m;
					else
						ws->in_head = m;
					ws->in_tail = m;
				}
				ws->partial_len = 0;
			}
			break;

		case LWS_CALLBACK_CLIENT_WRITEABLE:
			if (ws->close_wanted)
			{
				lws_close_reason(wsi, (enum lws_close_status) ws->close_wanted, NULL, 0);
				return -1;
			}
			if (ws->out_head != NULL)
			{
				WsMessage  *m = ws->out_head;
				unsigned char *buf = malloc(LWS_PRE + m->len);
				int			n;

				if (buf == NULL)
					return -1;
				memcpy(buf + LWS_PRE, m->data, m->len);
				n = lws_write(wsi, buf + LWS_PRE, m->len, LWS_WRITE_TEXT);
				/* IDENTIFY and RESUME carry the bot token: wipe every copy. */
				explicit_bzero(buf, LWS_PRE + m->len);
				explicit_bzero(m->data, m->len);
				free(buf);
				if (n < (int) m->len)
				{
					set_error(ws, "write failed", NULL, 0);
					return -1;
				}
				ws->out_head = m->next;
				if (ws->out_head == NULL)
					ws->out_tail = NULL;
				ws->out_count--;
				free(m);
				if (ws->out_head != NULL)
					lws_callback_on_writable(wsi);
			}
			break;

		case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
			/* in: the close frame's payload, a 2-byte code then the reason. */
			if (len >= 2)
			{
				const unsigned char *p = in;
				size_t		rlen = len - 2;

				ws->close_code = (p[0] << 8) | p[1];
				if (rlen >= sizeof(ws->close_reason))
					rlen = sizeof(ws->close_reason) - 1;
				memcpy(ws->close_reason, p + 2, rlen);
				ws->close_reason[rlen] = '\0';
			}
			break;

		case LWS_CALLBACK_CLIENT_CLOSED:
		case LWS_CALLBACK_WSI_DESTROY:
			ws->state = LHD_WS_CLOSED;
			ws->wsi = NULL;
			break;

		default:
			break;
	}
	return 0;
}

static const struct lws_protocols protocols[] = {
	{"lhdiscord-gateway", client_callback, 0, 0, 0, NULL, 0},
	{NULL, NULL, 0, 0, 0, NULL, 0}
};

/* The timer that makes one lws_service() call return: nothing else to do. */
static void
wake_cb(lws_sorted_usec_list_t *sul)
{
}

LhdWs *
lhd_ws_connect(const char *url, size_t max_message, LhdWsLogFn log,
			   char *err, size_t errlen)
{
	struct lws_context_creation_info info;
	struct lws_client_connect_info ci;
	LhdWs	   *ws;
	char	   *copy;
	const char *scheme;
	const char *host;
	const char *path;
	char	   *fullpath;
	int			port;
	bool		tls;

	log_fn = log;
	lws_set_log_level(LLL_ERR | LLL_WARN, emit_log);

	copy = strdup(url);
	if (copy == NULL || lws_parse_uri(copy, &scheme, &host, &port, &path) != 0 ||
		host[0] == '\0')
	{
		snprintf(err, errlen, "not a WebSocket URL: \"%s\"", url);
		free(copy);
		return NULL;
	}
	if (strcmp(scheme, "wss") == 0)
		tls = true;
	else if (strcmp(scheme, "ws") == 0)
		tls = false;
	else
	{
		snprintf(err, errlen, "not a ws:// or wss:// URL: \"%s\"", url);
		free(copy);
		return NULL;
	}
	ws = calloc(1, sizeof(LhdWs));
	fullpath = malloc(strlen(path) + 2);
	if (ws == NULL || fullpath == NULL)
	{
		snprintf(err, errlen, "out of memory");
		free(ws);
		free(fullpath);
		free(copy);
		return NULL;
	}
	fullpath[0] = '/';
	strcpy(fullpath + 1, path);
	ws->max_message = max_message;
	ws->state = LHD_WS_CONNECTING;

	memset(&info, 0, sizeof(info));
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.protocols = protocols;
	info.gid = -1;
	info.uid = -1;
	if (tls)
		info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
	info.fd_limit_per_thread = 4;
	ws->context = lws_create_context(&info);
	if (ws->context == NULL)
	{
		snprintf(err, errlen, "could not create a libwebsockets context");
		free(fullpath);
		free(copy);
		free(ws);
		return NULL;
	}

	memset(&ci, 0, sizeof(ci));
	ci.context = ws->context;
	ci.address = host;
	ci.port = port;
	ci.path = fullpath;
	ci.host = host;
	ci.origin = host;
	ci.ssl_connection = tls ? LCCSCF_USE_SSL : 0;
	ci.local_protocol_name = protocols[0].name;
	ci.userdata = ws;
	ci.pwsi = &ws->wsi;
	if (lws_client_connect_via_info(&ci) == NULL && ws->state != LHD_WS_CLOSED)
	{
		ws->state = LHD_WS_CLOSED;
		set_error(ws, "connection could not be started", NULL, 0);
	}
	free(fullpath);
	free(copy);
	return ws;
}

void
lhd_ws_service(LhdWs *ws, int max_wait_ms)
{
	if (ws == NULL || ws->context == NULL)
		return;
	if (max_wait_ms < 0)
		max_wait_ms = 0;
	lws_sul_schedule(ws->context, 0, &ws->wake, wake_cb, (lws_usec_t) max_wait_ms * LWS_US_PER_MS);
	lws_service(ws->context, 0);
	lws_sul_cancel(&ws->wake);
}

LhdWsState
lhd_ws_state(const LhdWs *ws)
{
	return ws ? ws->state : LHD_WS_CLOSED;
}

int
lhd_ws_close_code(const LhdWs *ws)
{
	return ws ? ws->close_code : 0;
}

const char *
lhd_ws_close_reason(const LhdWs *ws)
{
	return ws ? ws->close_reason : "";
}

const char *
lhd_ws_error(const LhdWs *ws)
{
	return ws ? ws->error : "";
}

char *
lhd_ws_receive(LhdWs *ws, size_t *len)
{
	WsMessage  *m;
	char	   *out;

	if (ws == NULL || ws->in_head == NULL)
		return NULL;
	m = ws->in_head;
	ws->in_head = m->next;
	if (ws->in_head == NULL)
		ws->in_tail = NULL;
	/* Hand the text over in its own allocation (the header goes). */
	out = malloc(m->len + 1);
	if (out != NULL)
	{
		memcpy(out, m->data, m->len + 1);
		*len = m->len;
	}
	free(m);
	return out;
}

bool
lhd_ws_has_message(const LhdWs *ws)
{
	return ws != NULL && ws->in_head != NULL;
}

bool
lhd_ws_send(LhdWs *ws, const char *data, size_t len)
{
	WsMessage  *m;

	if (ws == NULL || ws->state != LHD_WS_OPEN || ws->wsi == NULL || ws->close_wanted)
		return false;
	m = message_new(data, len);
	if (m == NULL)
		return false;
	if (ws->out_tail)
		ws->out_tail->next = m;
	else
		ws->out_head = m;
	ws->out_tail = m;
	ws->out_count++;
	lws_callback_on_writable(ws->wsi);
	return true;
}

int
lhd_ws_pending_sends(const LhdWs *ws)
{
	return ws ? ws->out_count : 0;
}

void
lhd_ws_close(LhdWs *ws, int code)
{
	if (ws == NULL || ws->state == LHD_WS_CLOSED || ws->close_wanted)
		return;
	ws->close_wanted = code;
	if (ws->wsi != NULL && ws->state == LHD_WS_OPEN)
		lws_callback_on_writable(ws->wsi);
}

void
lhd_ws_free(LhdWs *ws)
{
	if (ws == NULL)
		return;
	if (ws->context != NULL)
	{
		lws_sul_cancel(&ws->wake);
		lws_context_destroy(ws->context);
	}
	queue_free(&ws->in_head, &ws->in_tail);
	queue_free(&ws->out_head, &ws->out_tail);
	free(ws->partial);
	free(ws);
}
