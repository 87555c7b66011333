/*-------------------------------------------------------------------------
 *
 * http.c
 *	  The live Discord transport: REST v10 over libcurl multi.
 *
 * Owns sending the engine's ready requests: bounded concurrency over one
 * curl multi handle (connections are kept alive and reused, HTTP/2 is used
 * where a TLS server offers it), per-request timeouts, the headers Discord
 * requires (Authorization, User-Agent, Content-Type, X-Audit-Log-Reason),
 * reading rate-limit headers case-insensitively, and turning responses into
 * the request's status, Discord error code and body.  Pacing decisions come
 * from ratelimit.c; a 429 puts the request back in the queue; a 401 on the
 * bot token pauses all sending until the configuration is reloaded.
 *
 * curl handles and buffers are malloc'd and owned by a memory-context reset
 * callback on the engine's context, so an ERROR (query cancel, shutdown)
 * anywhere never leaks a connection.  Nothing here logs a header or a body:
 * they can hold the bot token or OAuth secrets.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/memutils.h"

#include "lhdiscord.h"
#include "lhd_engine.h"
#include "lhd_json.h"
#include "lhd_ratelimit.h"
#include "lhd_shared.h"

/*
 * The largest response read: a page of 1000 guild members is well under
 * 1 MiB.  A larger one is abandoned as soon as the cap is passed (or before
 * it starts, when Content-Length says so).
 */
#define MAX_RESPONSE	(8 * 1024 * 1024)
#define USER_AGENT		"User-Agent: DiscordBot (" LHD_PROJECT_URL ", " LHD_VERSION ")"

typedef struct Transfer
{
	struct Transfer *next;
	struct Transfer *prev;
	CURL	   *easy;
	struct curl_slist *headers;
	LhdRequest *r;
	char	   *buf;
	size_t		len;
	size_t		cap;
	bool		overflow;
	LhdRateHeaders rh;
	char		errbuf[CURL_ERROR_SIZE];
} Transfer;

typedef struct LhdHttp
{
	CURLM	   *multi;
	LhdLimiter *limiter;		/* the process's (see process_limiter) */
	bool		token_ok;		/* a probe accepted this bot token and base URL */
	char	   *identity;		/* their hash, as verified_identity holds it */
	LhdRequest *probe;			/* the probe in flight, or NULL */
	MemoryContext probe_cxt;	/* the probe's request, reset for each */
	int64		next_probe_at;	/* after a failed (not 401) probe */
	Transfer	active;			/* list head of transfers in flight */
	MemoryContextCallback cleanup;
} LhdHttp;

static bool curl_ready = false;

/*
 * The pacing state outlives engines: the worker rebuilds its engine after a
 * reload or an error, and must not forget a 429 block or the invalid
 * requests that count toward Discord's ban.
 */
static LhdLimiter *process_limiter = NULL;

/*
 * SHA-256 of the bot token and base URL that the last probe accepted.  A
 * bad token must cost one request, not a pipeline full of them: until a
 * probe (GET /users/@me) has accepted the current pair, no other request
 * with the bot token is sent.  A reload that changes either rebuilds the
 * engine and so probes again.
 */
static char verified_identity[65] = "";

/* The probe's route, as the engine names it for rate limits. */
static const char op_route_probe[] = "GET /users/@me";

static void
curl_init_once(void)
{
	if (curl_ready)
		return;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("lhdiscord: could not initialise libcurl")));
	curl_ready = true;
}

static size_t
write_body(char *data, size_t size, size_t nmemb, void *arg)
{
	Transfer   *t = arg;
	size_t		n = size * nmemb;

	if (t->len + n + 1 > MAX_RESPONSE)
	{
		t->overflow = true;
		return 0;				/* aborts the transfer */
	}
	if (t->len + n + 1 > t->cap)
	{
		size_t		cap = Max(t->cap * 2, t->len + n + 1);
		char	   *nb = realloc(t->buf, Max(cap, 4096));

		if (nb == NULL)
			return 0;
		t->buf = nb;
		t->cap = Max(cap, 4096);
	}
	memcpy(t->buf + t->len, data, n);
	t->len += n;
	t->buf[t->len] = '\0';
	return n;
}

static bool
header_is(const char *line, size_t len, const char *name, const char **value)
{
	size_t		nl = strlen(name);

	if (len <= nl || pg_strncasecmp(line, name, nl) != 0 || line[nl] != ':')
		return false;
	*value = line + nl + 1;
	while (**value == ' ' || **value == '\t')
		(*value)++;
	return true;
}

/* Rate-limit headers, matched case-insensitively. */
static size_t
read_header(char *line, size_t size, size_t nitems, void *arg)
{
	Transfer   *t = arg;
	size_t		len = size * nitems;
	const char *v;
	char		value[128];

	if (header_is(line, len, "x-ratelimit-bucket", &v) ||
		header_is(line, len, "x-ratelimit-limit", &v) ||
		header_is(line, len, "x-ratelimit-remaining", &v) ||
		header_is(line, len, "x-ratelimit-reset-after", &v) ||
		header_is(line, len, "x-ratelimit-global", &v) ||
		header_is(line, len, "x-ratelimit-scope", &v) ||
		header_is(line, len, "retry-after", &v))
	{
		size_t		vl = Min((size_t) (line + len - v), sizeof(value) - 1);

		memcpy(value, v, vl);
		value[vl] = '\0';
		value[strcspn(value, "\r\n")] = '\0';
		if (pg_strncasecmp(line, "x-ratelimit-bucket", 18) == 0)
			strlcpy(t->rh.bucket, value, sizeof(t->rh.bucket));
		else if (pg_strncasecmp(line, "x-ratelimit-limit", 17) == 0)
			t->rh.limit = atoi(value);
		else if (pg_strncasecmp(line, "x-ratelimit-remaining", 21) == 0)
		{
			t->rh.remaining = atoi(value);
			t->rh.has_remaining = true;
		}
		else if (pg_strncasecmp(line, "x-ratelimit-reset-after", 23) == 0)
		{
			t->rh.reset_after = strtod(value, NULL);
			t->rh.has_reset_after = true;
		}
		else if (pg_strncasecmp(line, "x-ratelimit-global", 18) == 0)
			t->rh.global = (pg_strcasecmp(value, "true") == 0);
		else if (pg_strncasecmp(line, "x-ratelimit-scope", 17) == 0)
			t->rh.shared_scope = (pg_strcasecmp(value, "shared") == 0);
		else if (t->rh.retry_after <= 0)
			t->rh.retry_after = strtod(value, NULL);
	}
	return len;
}

static void
transfer_free(Transfer *t)
{
	if (t->easy)
		curl_easy_cleanup(t->easy);
	/* The Authorization line is a secret. */
	for (struct curl_slist *h = t->headers; h != NULL; h = h->next)
		explicit_bzero(h->data, strlen(h->data));
	if (t->headers)
		curl_slist_free_all(t->headers);
	/* Responses may hold OAuth tokens: wipe before freeing. */
	if (t->buf)
		explicit_bzero(t->buf, t->cap);
	free(t->buf);
	free(t);
}

/* Memory-context callback: release every curl resource. */
static void
http_cleanup(void *arg)
{
	LhdHttp    *h = arg;
	Transfer   *t = h->active.next;

	while (t != &h->active)
	{
		Transfer   *next = t->next;

		curl_multi_remove_handle(h->multi, t->easy);
		transfer_free(t);
		t = next;
	}
	if (h->multi)
		curl_multi_cleanup(h->multi);
	h->multi = NULL;
	/* Those transfers are gone: none of their requests is in flight now. */
	lhd_limiter_forget_inflight(h->limiter);
}

static LhdHttp *
http_get(LhdEngine *e)
{
	LhdHttp    *h = e->http;

	if (h)
		return h;
	curl_init_once();
	if (process_limiter == NULL)
		process_limiter = lhd_limiter_create(TopMemoryContext);
	h = MemoryContextAllocZero(e->cxt, sizeof(LhdHttp));
	h->active.next = h->active.prev = &h->active;
	h->limiter = process_limiter;
	h->multi = curl_multi_init();
	if (h->multi == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("lhdiscord: could not create a curl multi handle")));
	curl_multi_setopt(h->multi, CURLMOPT_PIPELINING, (long) CURLPIPE_MULTIPLEX);
	curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long) lhd_max_concurrency);
	curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, (long) lhd_max_concurrency + 4);
	h->cleanup.func = http_cleanup;
	h->cleanup.arg = h;
	MemoryContextRegisterResetCallback(e->cxt, &h->cleanup);
	h->probe_cxt = AllocSetContextCreate(e->cxt, "lhdiscord token probe", ALLOCSET_SMALL_SIZES);
	{
		char	   *pair = psprintf("%s\n%s", lhd_bot_token ? lhd_bot_token : "", lhd_api_base_url);

		h->identity = MemoryContextStrdup(e->cxt, lhd_sha256_hex(pair, strlen(pair)));
		explicit_bzero(pair, strlen(pair));
		pfree(pair);
	}
	h->token_ok = strcmp(h->identity, verified_identity) == 0;
	lhd_set_token_verified(h->token_ok);
	e->http = h;
	return h;
}

/* X-Audit-Log-Reason: Discord takes 512 characters once URL-encoded. */
#define AUDIT_REASON_MAX 480

static bool
url_unreserved(unsigned char b)
{
	return (b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z') || (b >= '0' && b <= '9') ||
		b == '-' || b == '.' || b == '_' || b == '~';
}

/*
 * The length of the longest prefix of a reason whose URL encoding takes at
 * most max bytes: cut between characters (of the database encoding, as the
 * DM splitter does), so neither a %XX escape nor a multibyte character is
 * split.
 */
static int
reason_prefix(const char *reason, int max)
{
	int			used = 0;
	int			i = 0;

	while (reason[i] != '\0')
	{
		int			len = pg_mblen(reason + i);
		int			cost = 0;

		for (int k = 0; k < len; k++)
		{
			if (reason[i + k] == '\0')
				return i;		/* a truncated sequence: drop it */
			cost += url_unreserved((unsigned char) reason[i + k]) ? 1 : 3;
		}
		if (used + cost > max)
			break;
		used += cost;
		i += len;
	}
	return i;
}

/*
 * Append "Name: value" to a header list, failing cleanly on OOM (the list
 * stays the transfer's, and transfer_free releases it).
 */
static struct curl_slist *
add_header(struct curl_slist *list, const char *line)
{
	struct curl_slist *n = curl_slist_append(list, line);

	if (n == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	return n;
}

/*
 * Set up a transfer's easy handle for request r: URL, method, headers,
 * body, timeouts.  The caller owns t (and must have linked it where its
 * cleanup will find it).
 */
static void
setup_transfer(Transfer *t, LhdRequest *r)
{
	CURL	   *c = t->easy;
	char	   *url;
	char	   *line;

	t->r = r;
	t->rh.retry_after = -1;
	url = psprintf("%s%s%s%s", lhd_api_base_url, r->path,
				   r->query ? "?" : "", r->query ? r->query : "");
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_PRIVATE, t);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_2TLS);
	curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long) lhd_request_timeout_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long) Min(lhd_request_timeout_ms, 5000));
	curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) MAX_RESPONSE);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, t);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, read_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, t);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, t->errbuf);

	t->headers = add_header(t->headers, USER_AGENT);
	if (r->auth == LHD_AUTH_BOT)
	{
		line = psprintf("Authorization: Bot %s", lhd_bot_token);
		t->headers = add_header(t->headers, line);
		explicit_bzero(line, strlen(line));
		pfree(line);
	}
	else if (r->auth == LHD_AUTH_BEARER && r->bearer)
	{
		line = psprintf("Authorization: Bearer %s", r->bearer);
		t->headers = add_header(t->headers, line);
		explicit_bzero(line, strlen(line));
		pfree(line);
	}
	if (r->reason && r->reason[0] != '\0')
	{
		char	   *enc = curl_easy_escape(c, r->reason, reason_prefix(r->reason, AUDIT_REASON_MAX));

		if (enc)
		{
			t->headers = add_header(t->headers, psprintf("X-Audit-Log-Reason: %s", enc));
			curl_free(enc);
		}
	}
	switch (r->method)
	{
		case LHD_GET:
			curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
			break;
		case LHD_DELETE:
			curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "DELETE");
			break;
		case LHD_PUT:
		case LHD_POST:
			/*
			 * An empty body still sends Content-Length: 0, as Discord wants.
			 * Not copied: r->body outlives the transfer, and a secret body
			 * is then wiped in one place.
			 */
			curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long) (r->body ? strlen(r->body) : 0));
			curl_easy_setopt(c, CURLOPT_POSTFIELDS, r->body ? r->body : "");
			curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, lhd_method_names[r->method]);
			if (r->body)
				t->headers = add_header(t->headers,
										psprintf("Content-Type: %s",
												 r->content_type ? r->content_type : "application/json"));
			break;
	}
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, t->headers);
}

static Transfer *
transfer_new(void)
{
	Transfer   *t = calloc(1, sizeof(Transfer));

	if (t == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	t->easy = curl_easy_init();
	if (t->easy == NULL)
	{
		free(t);
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	}
	return t;
}

static void
start_transfer(LhdEngine *e, LhdHttp *h, LhdRequest *r)
{
	Transfer   *t = transfer_new();

	/* Link first, so cleanup finds it whatever happens next. */
	t->next = h->active.next;
	t->prev = &h->active;
	h->active.next->prev = t;
	h->active.next = t;
	setup_transfer(t, r);

	if (curl_multi_add_handle(h->multi, t->easy) != CURLM_OK)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("lhdiscord: could not start a Discord request")));
	e->inflight++;
	lhd_limiter_sent(h->limiter, r->limit_route, r->major, lhd_now_ms());
	lhd_count_call();
}

/* Complete a request without sending it (paused, no token). */
static void
complete_unsent(LhdEngine *e, LhdRequest *r, const char *why)
{
	MemoryContext old = MemoryContextSwitchTo(e->cxt);

	r->status = 0;
	r->paused = true;
	r->error = MemoryContextStrdup(r->task->cxt, why);
	e->completed = lappend(e->completed, r);
	MemoryContextSwitchTo(old);
}

static void
pause_sending(const char *reason)
{
	if (!lhd_is_paused())
		ereport(WARNING,
				(errmsg("lhdiscord: %s; all Discord sending is paused until the configuration is reloaded",
						reason),
				 errhint("Fix lhdiscord.bot_token, then run SELECT pg_reload_conf().")));
	lhd_set_paused(true, reason);
	lhd_set_last_error("%s", reason);
}

/*
 * Fill r's status (0 on transport failure), body, error text and Discord
 * error code from a finished transfer, in the current memory context; a
 * retry_after or global flag in the body goes to t's rate headers.
 */
static void
read_response(Transfer *t, CURLcode code)
{
	LhdRequest *r = t->r;
	long		status = 0;
	LhdJsonError err;

	r->resp_body = NULL;
	r->error = NULL;
	r->discord_code = 0;
	if (code != CURLE_OK)
	{
		r->status = 0;
		r->error = pstrdup(t->overflow || code == CURLE_FILESIZE_EXCEEDED
						   ? "response too large (over 8 MiB), abandoned" :
						   t->errbuf[0] ? t->errbuf : curl_easy_strerror(code));
		return;
	}
	curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
	r->status = status;
	r->resp_body = t->buf ? pstrdup(t->buf) : NULL;
	if (status >= 400 && lhd_json_parse_error(t->buf, &err))
	{
		/* Discord's API errors carry message, its OAuth2 errors error. */
		r->discord_code = err.code;
		r->error = err.message ? err.message : err.oauth_error;
		if (err.retry_after >= 0)
			t->rh.retry_after = err.retry_after;
		if (err.global)
			t->rh.global = true;
	}
}

static void start_transfer(LhdEngine *e, LhdHttp *h, LhdRequest *r);

/* Send the token probe: GET /users/@me with the bot token. */
static void
start_probe(LhdEngine *e, LhdHttp *h)
{
	MemoryContext old;
	LhdTask    *t;
	LhdRequest *r;

	MemoryContextReset(h->probe_cxt);
	old = MemoryContextSwitchTo(h->probe_cxt);
	t = palloc0(sizeof(LhdTask));
	t->cxt = h->probe_cxt;
	t->kind = LHD_JOB_UNKNOWN;
	t->lane = LHD_LANE_URGENT;
	r = lhd_task_request(t, LHD_OP_OAUTH_ME, "/users/@me");
	r->reason = NULL;
	MemoryContextSwitchTo(old);
	h->probe = r;
	start_transfer(e, h, r);
}

/* The probe's answer: 200 opens the pipeline; 401 has paused sending. */
static void
probe_answered(LhdHttp *h, LhdRequest *r)
{
	if (r->status == 200)
	{
		h->token_ok = true;
		strlcpy(verified_identity, h->identity, sizeof(verified_identity));
		lhd_set_token_verified(true);
	}
	else if (r->status != 401)
		h->next_probe_at = lhd_now_ms() + 1000;	/* Discord failing: again soon */
	h->probe = NULL;
}

/* Turn a finished transfer into the request's response. */
static void
finish_transfer(LhdEngine *e, LhdHttp *h, Transfer *t, CURLcode code)
{
	LhdRequest *r = t->r;
	long		status;
	MemoryContext old;
	bool		requeue = false;

	old = MemoryContextSwitchTo(r->task->cxt);
	read_response(t, code);
	status = r->status;
	if (code != CURLE_OK)
	{
		lhd_limiter_abandoned(h->limiter, r->limit_route, r->major);
		pg_atomic_fetch_add_u64(&lhd_shared->transport_errors, 1);
		lhd_set_last_error("%s: %s", r->route, r->error);
		lhd_note_discord_answer(false);
	}
	else
	{
		/* Answers to requests in flight when a 401 paused sending count once. */
		lhd_limiter_response(h->limiter, r->limit_route, r->major, &t->rh, status, lhd_now_ms(),
							 !(status == 401 && lhd_is_paused()));
		lhd_count_response(status);
		lhd_note_discord_answer(status < 500);
		if (status == 429)
		{
			/* Paced by the limiter now; try again, not the job's failure. */
			lhd_set_last_error("%s: HTTP 429 (%s, retry after %.3f s)", r->route,
							   t->rh.global ? "global" : "bucket", t->rh.retry_after);
			requeue = true;
		}
		else if (status == 401 && r->auth == LHD_AUTH_BOT)
		{
			pause_sending("Discord answered 401 Unauthorized: the bot token was rejected");
			r->paused = true;
		}
		else if (status >= 400)
			lhd_set_last_error("%s", lhd_response_summary(r));
	}
	MemoryContextSwitchTo(e->cxt);
	if (r == h->probe)
		probe_answered(h, r);
	else if (requeue)
		e->ready = lcons(r, e->ready);
	else
		e->completed = lappend(e->completed, r);
	MemoryContextSwitchTo(old);

	curl_multi_remove_handle(h->multi, t->easy);
	t->prev->next = t->next;
	t->next->prev = t->prev;
	transfer_free(t);
	e->inflight--;
}

static int
collect(LhdEngine *e, LhdHttp *h)
{
	CURLMsg    *msg;
	int			left;
	int			done = 0;

	while ((msg = curl_multi_info_read(h->multi, &left)) != NULL)
	{
		Transfer   *t = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &t);
		finish_transfer(e, h, t, msg->data.result);
		done++;
	}
	return done;
}

/*
 * Send what may be sent, and wait at most max_wait_ms for responses.
 * Answered requests move to e->completed.
 */
void
lhd_http_step(LhdEngine *e, int max_wait_ms)
{
	LhdHttp    *h = http_get(e);
	int64		next_delay = max_wait_ms;
	int			running = 0;
	ListCell   *lc;
	List	   *still = NIL;
	int64		now = lhd_now_ms();

	if (lhd_is_paused())
	{
		char		why[300];

		SpinLockAcquire(&lhd_shared->mutex);
		snprintf(why, sizeof(why), "sending paused: %s", lhd_shared->pause_reason);
		SpinLockRelease(&lhd_shared->mutex);
		foreach(lc, e->ready)
			complete_unsent(e, lfirst(lc), why);
		list_free(e->ready);
		e->ready = NIL;
	}

	/* An unverified bot token: one probe first, the rest waits for it. */
	if (!h->token_ok && h->probe == NULL && e->ready != NIL && !lhd_is_paused() &&
		lhd_bot_token != NULL && lhd_bot_token[0] != '\0' && now >= h->next_probe_at &&
		lhd_limiter_delay(h->limiter, op_route_probe, NULL, now) == 0)
		start_probe(e, h);

	foreach(lc, e->ready)
	{
		LhdRequest *r = lfirst(lc);
		int64		delay;

		if (r->auth == LHD_AUTH_BOT && (lhd_bot_token == NULL || lhd_bot_token[0] == '\0'))
		{
			/* Like a rejected token: pause and say so once, not retry forever. */
			pause_sending("lhdiscord.bot_token is not set");
			complete_unsent(e, r, "lhdiscord.bot_token is not set");
			continue;
		}
		if (r->auth == LHD_AUTH_BOT && !h->token_ok)
			delay = LHD_LIMIT_WAIT_RESPONSE;
		else if (e->inflight < lhd_max_concurrency)
			delay = lhd_limiter_delay(h->limiter, r->limit_route, r->major, now);
		else
			delay = LHD_LIMIT_WAIT_RESPONSE;
		if (delay == 0)
			start_transfer(e, h, r);
		else
		{
			MemoryContext old = MemoryContextSwitchTo(e->cxt);

			next_delay = Min(next_delay, delay);
			still = lappend(still, r);
			MemoryContextSwitchTo(old);
		}
	}
	list_free(e->ready);
	e->ready = still;

	curl_multi_perform(h->multi, &running);
	if (collect(e, h) > 0 || e->completed != NIL)
		return;
	if (e->inflight == 0 && e->ready == NIL)
		return;

	pgstat_report_wait_start(PG_WAIT_EXTENSION);
	curl_multi_poll(h->multi, NULL, 0, (int) Max(Min(next_delay, max_wait_ms), 1), NULL);
	pgstat_report_wait_end();
	curl_multi_perform(h->multi, &running);
	collect(e, h);
}

/* A reload: end the waits a 429 imposed (see lhd_limiter_clear_waits). */
void
lhd_http_clear_waits(void)
{
	if (process_limiter != NULL)
		lhd_limiter_clear_waits(process_limiter, lhd_now_ms());
}

/* Milliseconds left of a pending global 429 wait; 0 = none. */
int64
lhd_http_global_wait_ms(void)
{
	int64		now = lhd_now_ms();
	int64		until;

	if (process_limiter == NULL)
		return 0;
	until = lhd_limiter_blocked_until(process_limiter, now);
	return until > now ? until - now : 0;
}

/* The invalid-request count of this process's limiter (for worker_status). */
int
lhd_http_invalid_count(LhdEngine *e, bool *throttled)
{
	LhdHttp    *h = e->http;
	int			n;

	if (h == NULL)
	{
		*throttled = false;
		return 0;
	}
	n = lhd_limiter_invalid_count(h->limiter, lhd_now_ms());
	*throttled = n >= lhd_invalid_request_budget / 2;
	return n;
}

/*
 * Perform one request synchronously in the calling backend (OAuth during
 * complete_oauth()).  Bounded by lhdiscord.request_timeout, interruptible
 * (query cancel, statement_timeout, shutdown) every 100 ms, and leak-free:
 * curl resources are released however this function is left.  Sets
 * r->status (0 on transport failure), r->resp_body, r->error.
 */
void
lhd_http_sync(LhdRequest *r)
{
	Transfer   *volatile t = NULL;
	CURLM	   *volatile m = NULL;

	curl_init_once();
	PG_TRY();
	{
		CURLMsg    *msg = NULL;
		int			running = 1;
		int			left;

		m = curl_multi_init();
		if (m == NULL)
			ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
		t = transfer_new();
		setup_transfer(t, r);
		if (curl_multi_add_handle(m, t->easy) != CURLM_OK)
			ereport(ERROR,
					(errcode(ERRCODE_SYSTEM_ERROR),
					 errmsg("lhdiscord: could not start a Discord request")));
		while (running)
		{
			curl_multi_perform(m, &running);
			if (!running)
				break;
			pgstat_report_wait_start(PG_WAIT_EXTENSION);
			curl_multi_poll(m, NULL, 0, 100, NULL);
			pgstat_report_wait_end();
			CHECK_FOR_INTERRUPTS();
		}
		while ((msg = curl_multi_info_read(m, &left)) != NULL)
			if (msg->msg == CURLMSG_DONE)
				read_response(t, msg->data.result);
	}
	PG_FINALLY();
	{
		if (t != NULL)
		{
			if (m != NULL)
				curl_multi_remove_handle(m, t->easy);
			transfer_free(t);
		}
		if (m != NULL)
			curl_multi_cleanup(m);
	}
	PG_END_TRY();
}
