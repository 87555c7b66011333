/*-------------------------------------------------------------------------
 *
 * gateway_rest.c
 *	  GET /gateway/bot for the Gateway worker.
 *
 * Owns the one REST call the Gateway worker makes itself (the outbox's
 * calls go through http.c's pipeline): a blocking libcurl request with the
 * bot token, lhdiscord.request_timeout and a 1 MiB cap on the body, counted
 * in worker_status like every call.  It reports what Discord answered;
 * what to do about it (connect, wait, stop) is gateway.c's.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "lhdiscord.h"
#include "lhd_gateway.h"
#include "lhd_json.h"
#include "lhd_shared.h"

#define BODY_CAP	(1024 * 1024)

typedef struct HttpBody
{
	char	   *data;
	size_t		len;
} HttpBody;

/* libcurl's write callback: plain malloc, never an ERROR inside libcurl. */
static size_t
body_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	HttpBody   *b = userdata;
	size_t		n = size * nmemb;
	char	   *p;

	if (b->len + n > BODY_CAP)
		return 0;
	p = realloc(b->data, b->len + n + 1);
	if (p == NULL)
		return 0;
	b->data = p;
	memcpy(b->data + b->len, ptr, n);
	b->len += n;
	b->data[b->len] = '\0';
	return n;
}

void
lhd_gateway_bot_request(LhdGwBotAnswer *out)
{
	CURL	   *curl = curl_easy_init();
	struct curl_slist *headers = NULL;
	HttpBody	body = {NULL, 0};
	char	   *auth;
	CURLcode	rc;

	memset(out, 0, sizeof(*out));
	out->retry_after = -1;
	if (curl == NULL)
	{
		out->error = "libcurl could not start a request";
		return;
	}
	auth = psprintf("Authorization: Bot %s", lhd_bot_token);
	headers = curl_slist_append(headers, auth);
	headers = curl_slist_append(headers, "User-Agent: DiscordBot (" LHD_PROJECT_URL ", " LHD_VERSION ")");
	curl_easy_setopt(curl, CURLOPT_URL, psprintf("%s/gateway/bot", lhd_api_base_url));
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, body_write);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long) lhd_request_timeout_ms);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
	rc = curl_easy_perform(curl);
	if (rc == CURLE_OK)
		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &out->status);
	else
		out->error = pstrdup(curl_easy_strerror(rc));
	curl_slist_free_all(headers);
	curl_easy_cleanup(curl);
	explicit_bzero(auth, strlen(auth));
	lhd_count_call();
	if (out->status != 0)
		lhd_count_response(out->status);
	else
		pg_atomic_fetch_add_u64(&lhd_shared->transport_errors, 1);

	if (out->status == 200)
		(void) lhd_json_gateway_bot(body.data, &out->bot);
	else if (out->status == 429)
	{
		LhdJsonError err;

		if (lhd_json_parse_error(body.data, &err) && err.retry_after > 0)
			out->retry_after = err.retry_after;
	}
	free(body.data);
}
