/*-------------------------------------------------------------------------
 *
 * gateway.c
 *	  The Gateway worker: one Discord Gateway session for the bot.
 *
 * Owns the second background worker ("lhdiscord gateway", only with
 * lhdiscord.gateway = on) and the Gateway protocol (v10, JSON) over the
 * WebSocket client of ws.c: GET /gateway/bot (session_start_limit), HELLO,
 * heartbeats every heartbeat_interval (the first one jittered), IDENTIFY
 * with the GUILDS and GUILD_MEMBERS intents (at most one per 5 s), READY
 * (session id, resume URL, sequence), RESUME after a drop, a fresh IDENTIFY
 * after INVALID_SESSION (d: false) or a refused resume, RECONNECT, and a
 * zombie connection (a heartbeat not ACKed within 0.4 interval)
 * closed and resumed.  Close codes 4004 (authentication failed), 4010-4014
 * (shard, version, intents) stop reconnecting and raise an alarm in
 * worker_status that names the fix; a reload tries again.  Other closes
 * reconnect with capped, jittered backoff.  Commands stay under 120 per
 * connection per 60 s.
 *
 * Member state: when a session starts, every member is requested
 * (REQUEST_GUILD_MEMBERS); the chunks and member events go to
 * gateway_live.c, which keeps the live snapshot (over the SQL of
 * gateway_state.c).  GET /gateway/bot is gateway_rest.c's.
 *
 * Fault handling is the outbox worker's (bgw.c): every unit of work is a
 * protected transaction; anything else lands in the sigsetjmp block, which
 * cleans up as PostgreSQL's background processes do, drops the connection
 * and backs off.  The loop never waits longer than 100 ms in libwebsockets'
 * poll, which a signal ends early, so SIGTERM, reloads and postmaster death
 * are served at once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <setjmp.h>

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/pmsignal.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timeout.h"

#include "lhdiscord.h"
#include "lhd_access.h"
#include "lhd_bgw.h"
#include "lhd_engine.h"
#include "lhd_gateway.h"
#include "lhd_json.h"
#include "lhd_shared.h"
#include "lhd_ws.h"

PGDLLEXPORT void lhdiscord_gateway_main(Datum main_arg);

#define GW_INTENTS				((1 << 0) | (1 << 1))	/* GUILDS, GUILD_MEMBERS */
#define GW_MAX_MESSAGE			(16 * 1024 * 1024)
#define GW_IDENTIFY_SPACING_MS	5250	/* Discord: one per 5 s, and a margin */
#define GW_HELLO_TIMEOUT_MS		20000
#define GW_MAX_BACKOFF_MS		60000
#define GW_COMMAND_LIMIT		120 /* per connection, per 60 s */
#define GW_COMMAND_WINDOW_MS	60000
#define GW_HEARTBEAT_RESERVE	5	/* commands kept for heartbeats */
#define GW_SERVICE_MS			100

typedef enum GwPhase
{
	GW_DISCONNECTED,
	GW_CONNECTING,
	GW_IDENTIFYING,
	GW_RESUMING,
	GW_CONNECTED,
	GW_BACKOFF,
	GW_STOPPED
} GwPhase;

static const char *const phase_names[] = {
	[GW_DISCONNECTED] = "disconnected",
	[GW_CONNECTING] = "connecting",
	[GW_IDENTIFYING] = "identifying",
	[GW_RESUMING] = "resuming",
	[GW_CONNECTED] = "connected",
	[GW_BACKOFF] = "backoff",
	[GW_STOPPED] = "stopped",
};

static struct
{
	GwPhase		phase;
	LhdWs	   *ws;
	int64		conn_started;
	bool		hello_seen;

	/* The session, kept across connections for RESUME. */
	char		session_id[128];
	char		resume_url[512];
	bool		has_seq;
	long long	seq;
	bool		resume_next;	/* the next connection resumes */

	/* Heartbeats. */
	long		interval;
	int64		next_beat;
	bool		awaiting_ack;
	int64		beat_sent_at;
	int64		ack_deadline;	/* a beat not ACKed by then: a zombie */
	int64		last_receive;	/* the last message received */

	/* IDENTIFY pacing and reconnects. */
	int64		last_identify;
	int64		identify_at;	/* an IDENTIFY is due then (0: none) */
	int			attempts;		/* failed connections in a row */
	int64		reconnect_at;

	/* Commands sent on this connection (a ring of send times). */
	int64		sent_at[GW_COMMAND_LIMIT];
	int			nsent;

} gw;

static LhdGatewayStatus status;
static MemoryContext gateway_cxt = NULL;	/* for the process's life */
static MemoryContext message_cxt = NULL;	/* reset after each message */
static int	consecutive_errors = 0;

void
lhd_register_gateway(void)
{
	BackgroundWorker w;

	if (!process_shared_preload_libraries_in_progress || IsBinaryUpgrade || !lhd_gateway_enabled)
		return;
	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = 5;
	strlcpy(w.bgw_library_name, "lhdiscord", BGW_MAXLEN);
	strlcpy(w.bgw_function_name, "lhdiscord_gateway_main", BGW_MAXLEN);
	strlcpy(w.bgw_name, "lhdiscord gateway", BGW_MAXLEN);
	strlcpy(w.bgw_type, "lhdiscord gateway", BGW_MAXLEN);
	RegisterBackgroundWorker(&w);
}

static void
publish(void)
{
	strlcpy(status.state, phase_names[gw.phase], sizeof(status.state));
	status.seeded = lhd_gw_live.seeded;
	status.snapshot_id = lhd_gw_live.snapshot_id;
	status.events = lhd_gw_live.events;
	status.last_event_at = lhd_gw_live.last_event_at;
	status.seq = gw.has_seq ? gw.seq : 0;
	lhd_gateway_publish(&status);
}

static void
gateway_unregister(int code, Datum arg)
{
	memset(&status, 0, sizeof(status));
	lhd_gateway_publish(&status);
}

static void
ws_log(const char *line)
{
	ereport(LOG, (errmsg("lhdiscord gateway: libwebsockets: %s", line)));
}

/* A random delay in [lo, hi] ms. */
static int64
jitter(int64 lo, int64 hi)
{
	uint32		r = 0;

	if (hi <= lo)
		return lo;
	if (!pg_strong_random(&r, sizeof(r)))
		r = (uint32) lhd_now_ms();
	return lo + (int64) (r % (uint32) (hi - lo + 1));
}

/* ---------- sending ---------- */

/* Commands in the last 60 s on this connection. */
static int
commands_in_window(int64 now)
{
	int			n = 0;

	for (int i = 0; i < Min(gw.nsent, GW_COMMAND_LIMIT); i++)
		if (now - gw.sent_at[i] < GW_COMMAND_WINDOW_MS)
			n++;
	return n;
}

/*
 * Send one command; false when the connection is gone or the command
 * would pass Discord's limit (a few are kept for heartbeats).  The text is
 * wiped afterwards: IDENTIFY and RESUME hold the bot token.
 */
static bool
send_command(char *text, bool heartbeat)
{
	int64		now = lhd_now_ms();
	int			used = commands_in_window(now);
	bool		ok;

	if (used >= GW_COMMAND_LIMIT - (heartbeat ? 0 : GW_HEARTBEAT_RESERVE))
	{
		ereport(LOG, (errmsg("lhdiscord gateway: %d commands sent in the last 60 s; this one waits", used)));
		explicit_bzero(text, strlen(text));
		return false;
	}
	ok = lhd_ws_send(gw.ws, text, strlen(text));
	explicit_bzero(text, strlen(text));
	if (ok)
		gw.sent_at[gw.nsent++ % GW_COMMAND_LIMIT] = now;
	return ok;
}

static void
send_heartbeat(void)
{
	(void) send_command(lhd_json_gateway_heartbeat(gw.has_seq, gw.seq), true);
}

static void
send_identify(void)
{
	if (send_command(lhd_json_gateway_identify(lhd_bot_token, GW_INTENTS), false))
	{
		gw.last_identify = lhd_now_ms();
		gw.identify_at = 0;
		status.identifies++;
		gw.phase = GW_IDENTIFYING;
	}
}

/* ---------- the connection ---------- */

/* Forget the session: the next connection identifies afresh. */
static void
forget_session(void)
{
	gw.session_id[0] = '\0';
	gw.resume_url[0] = '\0';
	gw.has_seq = false;
	gw.seq = 0;
	gw.resume_next = false;
}

/*
 * Leave the connection (with a close frame when it is still open), and
 * connect again after delay_ms, resuming when resumable.
 */
static void
drop_connection(bool resumable, int64 delay_ms, int code)
{
	if (gw.ws != NULL)
	{
		if (lhd_ws_state(gw.ws) == LHD_WS_OPEN)
		{
			lhd_ws_close(gw.ws, code);
			/* A moment for the close frame; a zombie gets no more. */
			for (int i = 0; i < 3 && lhd_ws_state(gw.ws) != LHD_WS_CLOSED; i++)
				lhd_ws_service(gw.ws, 20);
		}
		lhd_ws_free(gw.ws);
		gw.ws = NULL;
	}
	gw.hello_seen = false;
	gw.awaiting_ack = false;
	gw.identify_at = 0;
	gw.resume_next = resumable && gw.session_id[0] != '\0';
	if (!gw.resume_next)
	{
		forget_session();
		lhd_gw_live.seeded = false;
	}
	if (lhd_gw_live.seeding)
	{
		/* The listing was cut: the next session lists again. */
		lhd_gw_live_stop();
		lhd_gw_live.seeded = false;
	}
	gw.reconnect_at = lhd_now_ms() + delay_ms;
	gw.phase = GW_BACKOFF;
	publish();
}

/* Stop reconnecting until a reload: the fix is the operator's. */
static void
stop_with_alarm(const char *alarm)
{
	drop_connection(false, 0, 1000);
	strlcpy(status.alarm, alarm, sizeof(status.alarm));
	gw.phase = GW_STOPPED;
	ereport(WARNING,
			(errmsg("lhdiscord gateway: stopped: %s", alarm),
			 errhint("Fix it, then run SELECT pg_reload_conf() to connect again.")));
	publish();
}

/* The backoff after a failed connection: capped, jittered, 0-1 s the first time. */
static int64
backoff_ms(void)
{
	int64		cap;

	gw.attempts++;
	if (gw.attempts == 1)
		return jitter(0, 1000);
	cap = Min((int64) 1000 << Min(gw.attempts - 1, 6), GW_MAX_BACKOFF_MS);
	return jitter(cap / 2, cap);
}

/*
 * GET /gateway/bot: the URL to connect to.  Returns NULL (having decided
 * what happens next: a wait, a stop) when there is none to use now.
 */
static char *
gateway_url(void)
{
	LhdGwBotAnswer a;

	lhd_gateway_bot_request(&a);
	if (a.status == 200 && a.bot.url != NULL)
	{
		if (a.bot.remaining != 0)
			return a.bot.url;
		ereport(LOG,
				(errmsg("lhdiscord gateway: no session starts left today; the next one in %ld ms",
						a.bot.reset_after_ms)));
		gw.reconnect_at = lhd_now_ms() + Max(a.bot.reset_after_ms, 1000);
	}
	else if (a.status == 401)
		stop_with_alarm("Discord refused the bot token (401 from GET /gateway/bot): set lhdiscord.bot_token to the bot's token");
	else if (a.status == 429)
		gw.reconnect_at = lhd_now_ms() +
			(int64) (Min(a.retry_after > 0 ? a.retry_after : 5.0, (double) lhd_rate_limit_max_wait) * 1000.0);
	else
	{
		ereport(LOG,
				(errmsg("lhdiscord gateway: GET /gateway/bot failed (%s); trying again later",
						a.status == 0 ? a.error : psprintf("HTTP %ld", a.status))));
		gw.reconnect_at = lhd_now_ms() + backoff_ms();
	}
	return NULL;
}

/*
 * wss:// anywhere, plain ws:// only to a loopback host (the rule of
 * lhdiscord.api_base_url): the bot token goes over this connection.
 */
static bool
acceptable_url(const char *url)
{
	const char *host;
	size_t		len;

	if (pg_strncasecmp(url, "wss://", 6) == 0)
		return true;
	if (pg_strncasecmp(url, "ws://", 5) != 0)
		return false;
	host = url + 5;
	if (host[0] == '[')
	{
		const char *end = strchr(host, ']');

		return end != NULL && lhd_is_loopback_host(host + 1, end - host - 1);
	}
	len = strcspn(host, ":/?");
	return lhd_is_loopback_host(host, len);
}

static void
start_connection(void)
{
	char	   *base;
	char	   *url;
	char		err[256];

	if (lhd_api_mode == LHD_API_FAKE)
	{
		stop_with_alarm("lhdiscord.api_mode is fake: the Gateway is not used; set it to live");
		return;
	}
	if (lhd_bot_token == NULL || lhd_bot_token[0] == '\0')
	{
		stop_with_alarm("lhdiscord.bot_token is not set: set it to the bot's token");
		return;
	}
	if (lhd_guild_id == NULL || lhd_guild_id[0] == '\0')
	{
		stop_with_alarm("lhdiscord.guild_id is not set: set it to the guild's id");
		return;
	}
	if (gw.resume_next && gw.resume_url[0] != '\0')
		base = pstrdup(gw.resume_url);
	else
	{
		gw.resume_next = false;
		base = gateway_url();
		if (base == NULL)
		{
			if (gw.phase != GW_STOPPED)
				gw.phase = GW_BACKOFF;
			return;
		}
	}
	if (!acceptable_url(base))
	{
		forget_session();
		stop_with_alarm(psprintf("Discord gave a Gateway URL that is not wss:// (\"%s\"): the bot token is only sent over TLS, or to a loopback host",
								 base));
		return;
	}
	url = psprintf("%s%sv=10&encoding=json", base,
				   strchr(base, '?') ? "&" : (base[strlen(base) - 1] == '/' ? "?" : "/?"));
	if (status.pid != 0 && (status.identifies > 0 || status.resumes > 0))
		status.reconnects++;
	status.pid = MyProcPid;
	gw.ws = lhd_ws_connect(url, GW_MAX_MESSAGE, ws_log, err, sizeof(err));
	if (gw.ws == NULL)
	{
		ereport(LOG, (errmsg("lhdiscord gateway: %s", err)));
		gw.reconnect_at = lhd_now_ms() + backoff_ms();
		gw.phase = GW_BACKOFF;
		return;
	}
	gw.conn_started = lhd_now_ms();
	gw.hello_seen = false;
	gw.nsent = 0;
	gw.phase = GW_CONNECTING;
	publish();
}

/* ---------- the protocol ---------- */

/* Ask for every member (gateway_live.c stores what comes). */
static void
start_seeding(void)
{
	char	   *cmd = lhd_gw_live_begin();

	if (cmd != NULL && !send_command(cmd, false))
		lhd_gw_live_retry();
	publish();
}

static void
on_hello(long interval)
{
	int64		now = lhd_now_ms();

	gw.hello_seen = true;
	gw.interval = Max(interval, 1000);
	/* The first beat at interval * jitter, as Discord asks. */
	gw.next_beat = now + jitter(0, gw.interval);
	gw.awaiting_ack = false;
	if (gw.resume_next && gw.session_id[0] != '\0')
	{
		if (send_command(lhd_json_gateway_resume(lhd_bot_token, gw.session_id, gw.seq), false))
			gw.phase = GW_RESUMING;
		return;
	}
	forget_session();
	gw.identify_at = Max(now, gw.last_identify + GW_IDENTIFY_SPACING_MS);
	gw.phase = GW_IDENTIFYING;
}

static void
on_dispatch(const LhdGwFrame *f)
{
	if (strcmp(f->type, "READY") == 0)
	{
		strlcpy(gw.session_id, f->session_id ? f->session_id : "", sizeof(gw.session_id));
		strlcpy(gw.resume_url, f->resume_url ? f->resume_url : "", sizeof(gw.resume_url));
		gw.phase = GW_CONNECTED;
		gw.attempts = 0;
		status.connected_at = GetCurrentTimestamp();
		status.alarm[0] = '\0';
		ereport(LOG, (errmsg("lhdiscord gateway: session ready; listing the guild's members")));
		start_seeding();
	}
	else if (strcmp(f->type, "RESUMED") == 0)
	{
		gw.phase = GW_CONNECTED;
		gw.attempts = 0;
		status.resumes++;
		status.connected_at = GetCurrentTimestamp();
		ereport(LOG, (errmsg("lhdiscord gateway: session resumed at sequence %lld", gw.seq)));
		if (!lhd_gw_live.seeded && !lhd_gw_live.seeding)
			start_seeding();
		else
			lhd_gw_live_healthy();
	}
	else if (strcmp(f->type, "GUILD_MEMBERS_CHUNK") == 0)
		lhd_gw_live_chunk(f);
	else if (strncmp(f->type, "GUILD_MEMBER_", 13) == 0)
		lhd_gw_live_event(f);
	publish();
}

static void
handle_message(const char *text)
{
	LhdGwFrame	f;

	if (!lhd_json_gateway_frame(text, &f))
	{
		ereport(LOG, (errmsg("lhdiscord gateway: ignored a payload that is not a Gateway message")));
		return;
	}
	if (f.has_seq && (!gw.has_seq || f.seq > gw.seq))
	{
		gw.seq = f.seq;
		gw.has_seq = true;
	}
	switch (f.op)
	{
		case LHD_GW_OP_HELLO:
			on_hello(f.heartbeat_interval);
			break;
		case LHD_GW_OP_HEARTBEAT:
			send_heartbeat();
			break;
		case LHD_GW_OP_HEARTBEAT_ACK:
			gw.awaiting_ack = false;
			lhd_gw_live_healthy();
			break;
		case LHD_GW_OP_RECONNECT:
			ereport(LOG, (errmsg("lhdiscord gateway: Discord asked for a reconnect; resuming")));
			drop_connection(true, 0, 4000);
			break;
		case LHD_GW_OP_INVALID_SESSION:
			ereport(LOG,
					(errmsg("lhdiscord gateway: session invalidated (%s)",
							f.resumable ? "resumable" : "identifying again")));
			/* Discord asks for a wait of 1 to 5 s first. */
			drop_connection(f.resumable, jitter(1000, 5000), 4000);
			break;
		case LHD_GW_OP_DISPATCH:
			if (f.type != NULL)
				on_dispatch(&f);
			break;
		default:
			break;
	}
}

/* The server closed the connection (or it broke). */
static void
on_closed(void)
{
	int			code = lhd_ws_close_code(gw.ws);
	const char *error = lhd_ws_error(gw.ws);

	if (code != 0)
		ereport(LOG,
				(errmsg("lhdiscord gateway: connection closed with code %d%s%s", code,
						lhd_ws_close_reason(gw.ws)[0] ? ": " : "", lhd_ws_close_reason(gw.ws))));
	else
		ereport(LOG,
				(errmsg("lhdiscord gateway: connection lost%s%s", error[0] ? ": " : "", error)));
	switch (code)
	{
		case 4004:
			stop_with_alarm("Gateway close 4004 (authentication failed): set lhdiscord.bot_token to the bot's token");
			return;
		case 4014:
			stop_with_alarm("Gateway close 4014 (disallowed intents): enable the Server Members Intent (GUILD_MEMBERS) for the bot in the Discord Developer Portal");
			return;
		case 4010:
		case 4011:
		case 4012:
		case 4013:
			stop_with_alarm(psprintf("Gateway close %d (%s): this version of lhdiscord cannot connect; upgrade it",
									 code, code == 4010 ? "invalid shard" : code == 4011 ? "sharding required"
									 : code == 4012 ? "invalid API version" : "invalid intents"));
			return;
		case 4007:				/* invalid seq */
		case 4009:				/* session timed out */
			drop_connection(false, backoff_ms(), 1000);
			return;
		default:
			drop_connection(true, backoff_ms(), 4000);
			return;
	}
}

/* Heartbeats, a zombie, a paced IDENTIFY, a listing due, a silent server. */
static void
run_timers(void)
{
	int64		now = lhd_now_ms();

	if (gw.ws == NULL)
		return;
	if (!gw.hello_seen)
	{
		if (now - gw.conn_started > GW_HELLO_TIMEOUT_MS)
		{
			ereport(LOG, (errmsg("lhdiscord gateway: no HELLO within %d s; reconnecting", GW_HELLO_TIMEOUT_MS / 1000)));
			drop_connection(true, backoff_ms(), 4000);
		}
		return;
	}
	/*
	 * An ACK is due within 0.4 interval of its beat (a loopback or a
	 * healthy link answers in milliseconds), so a connection that went
	 * silent is found within 1.4 intervals of its last ACK, and resumed.
	 * While other messages still arrive (a long member listing queues the
	 * ACK behind its chunks) the connection is alive: it gets two
	 * intervals.
	 */
	if (gw.awaiting_ack && now >= gw.ack_deadline &&
		(gw.last_receive <= gw.beat_sent_at || now - gw.beat_sent_at >= 2 * gw.interval))
	{
		ereport(LOG,
				(errmsg("lhdiscord gateway: no heartbeat ACK within %ld ms: a zombie connection; reconnecting to resume",
						gw.interval * 2 / 5)));
		drop_connection(true, 0, 4000);
		return;
	}
	if (now >= gw.next_beat)
	{
		send_heartbeat();
		gw.awaiting_ack = true;
		gw.beat_sent_at = now;
		gw.ack_deadline = now + gw.interval * 2 / 5;
		gw.next_beat = now + gw.interval;
	}
	if (gw.identify_at != 0 && now >= gw.identify_at)
		send_identify();
	if (lhd_gw_live.reseed_at != 0 && now >= lhd_gw_live.reseed_at && gw.phase == GW_CONNECTED)
		start_seeding();
}

/* How long the next service call may wait. */
static int
service_wait(void)
{
	int64		now = lhd_now_ms();
	int64		wait = GW_SERVICE_MS;

	if (gw.hello_seen)
		wait = Min(wait, gw.next_beat - now);
	if (gw.awaiting_ack)
		wait = Min(wait, gw.ack_deadline - now);
	if (gw.identify_at != 0)
		wait = Min(wait, gw.identify_at - now);
	return (int) Max(wait, 0);
}

static void
handle_reload(void)
{
	if (!ConfigReloadPending)
		return;
	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);
	lhd_bgw_session_settings();
	lhd_bgw_recheck_extension();
	if (gw.phase == GW_STOPPED)
	{
		ereport(LOG, (errmsg("lhdiscord gateway: configuration reloaded; connecting again")));
		status.alarm[0] = '\0';
		gw.phase = GW_DISCONNECTED;
		gw.attempts = 0;
		gw.reconnect_at = 0;
		/* gw.last_identify stays: IDENTIFY keeps its pace across reloads. */
	}
}

static void
gateway_iteration(void)
{
	char	   *text;
	size_t		len;
	int64		started;

	CHECK_FOR_INTERRUPTS();
	handle_reload();
	if (!PostmasterIsAlive())
		proc_exit(1);
	if (!lhd_bgw_extension_ready())
	{
		publish();
		lhd_bgw_wait_latch(1000);
		return;
	}
	if (gw.phase == GW_STOPPED)
	{
		pgstat_report_activity(STATE_IDLE, "lhdiscord gateway: stopped, waiting for a reload");
		lhd_bgw_wait_latch(5000);
		return;
	}
	if (gw.ws == NULL)
	{
		int64		now = lhd_now_ms();

		if (now < gw.reconnect_at)
		{
			publish();
			lhd_bgw_wait_latch(Min(gw.reconnect_at - now, 1000));
			return;
		}
		start_connection();
		return;
	}
	/* Messages still queued from the last pass: no waiting. */
	lhd_ws_service(gw.ws, lhd_ws_has_message(gw.ws) ? 0 : service_wait());
	started = lhd_now_ms();
	while (gw.ws != NULL && (text = lhd_ws_receive(gw.ws, &len)) != NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(message_cxt);

		gw.last_receive = lhd_now_ms();
		handle_message(text);
		free(text);
		MemoryContextSwitchTo(old);
		MemoryContextReset(message_cxt);
		CHECK_FOR_INTERRUPTS();
		/* A long listing: keep the heartbeats going between its chunks. */
		if (lhd_now_ms() - started >= GW_SERVICE_MS)
			break;
	}
	run_timers();
	if (gw.ws != NULL && lhd_ws_state(gw.ws) == LHD_WS_CLOSED)
		on_closed();
	consecutive_errors = 0;
}

/* After an ERROR that escaped a unit: clean up, drop the connection, back off. */
static void
recover_from_error(void)
{
	int64		backoff;

	lhd_bgw_recover_begin("the Gateway session");
	MemoryContextReset(message_cxt);
	consecutive_errors++;
	backoff = Min((int64) 1000 << Min(consecutive_errors - 1, 5), 30000);
	RESUME_INTERRUPTS();
	ereport(LOG,
			(errmsg("lhdiscord gateway: recovered from an error; reconnecting in " INT64_FORMAT " ms", backoff)));
	drop_connection(true, backoff, 4000);
}

void
lhdiscord_gateway_main(Datum main_arg)
{
	sigjmp_buf	local_sigjmp_buf;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/*
	 * Not lhd_am_worker: what this worker queues (a drift repair) wakes the
	 * outbox worker when it commits, as an application's writes do.
	 */
	BackgroundWorkerInitializeConnection(lhd_database, NULL, 0);
	pgstat_report_appname("lhdiscord gateway");
	gateway_cxt = AllocSetContextCreate(TopMemoryContext, "lhdiscord gateway",
										ALLOCSET_DEFAULT_SIZES);
	message_cxt = AllocSetContextCreate(gateway_cxt, "lhdiscord gateway message",
										ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(gateway_cxt);
	lhd_bgw_cxt = gateway_cxt;
	lhd_bgw_name = "lhdiscord gateway";
	lhd_bgw_kind = "gateway";
	lhd_bgw_session_settings();

	memset(&gw, 0, sizeof(gw));
	memset(&status, 0, sizeof(status));
	lhd_gw_live_init(gateway_cxt);
	status.pid = MyProcPid;
	gw.phase = GW_DISCONNECTED;
	publish();
	before_shmem_exit(gateway_unregister, (Datum) 0);
	ereport(LOG, (errmsg("lhdiscord gateway started (database \"%s\")", lhd_database)));

	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
		recover_from_error();
	PG_exception_stack = &local_sigjmp_buf;

	for (;;)
	{
		MemoryContextSwitchTo(gateway_cxt);
		gateway_iteration();
	}
}
