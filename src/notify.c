/*-------------------------------------------------------------------------
 *
 * notify.c
 *	  Discord DM notifications (Lighthouse spec section 10).
 *
 * Owns notify(user_id, notification, content): the list of notification
 * names that may be delivered as DMs, the user's preference, and queueing
 * one DM job per *active* Discord account.  Content longer than Discord's
 * 2000 characters is split here, on line then word boundaries, into ordered
 * parts; the DM job (jobs_dm.c) posts each part once, with its own nonce.
 * Delivery failures (DMs closed, unknown user) end that account's job only
 * and never surface to the caller.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/json.h"

#include "lhdiscord.h"
#include "lhd_engine.h"

PG_FUNCTION_INFO_V1(notify);

/* Longest content accepted: 20 messages. */
#define NOTIFY_MAX_CHARS (20 * LHD_MESSAGE_MAX)

/* The user-facing notifications that support Discord DMs. */
static const char *const supported[] = {
	"NewTicketNotification",
	"NewTicketReplyNotification",
	"TicketAssignedNotification",
	"MessageFlaggedNotification",
	"BrigTimerExpiredNotification",
	"UserPutInBrigNotification",
	"UserReleasedFromBrigNotification",
	"UserPromotedToTravelerNotification",
	"UserPromotedToResidentNotification",
	"UserPromotedToStowawayNotification",
	NULL
};

/* Known notifications that are not user-facing DMs: accepted, never sent. */
static const char *const not_dm[] = {
	"TicketDigestNotification",
	"MinecraftCommandNotification",
	NULL
};

static bool
in_list(const char *const *list, const char *name)
{
	for (int i = 0; list[i]; i++)
		if (strcmp(list[i], name) == 0)
			return true;
	return false;
}

/*
 * notify(user_id bigint, notification text, content text,
 *		  lane outbox_lane DEFAULT NULL) -> int
 * Queues one DM per active Discord account of the user when the user wants
 * Discord DMs and there is content, in lane (default interactive; bulk for
 * a mass announcement); returns the number queued.
 */
Datum
notify(PG_FUNCTION_ARGS)
{
	static LhdPlan user_plan = {
		.sql = "SELECT notify_discord FROM lhdiscord.users WHERE user_id = $1",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	static LhdPlan queue_plan = {
		.sql = "INSERT INTO lhdiscord.outbox (kind, discord_user_id, user_id, payload, reason, lane) "
		"SELECT 'dm', a.discord_user_id, a.user_id, "
		"       jsonb_build_object('notification', $2::text, 'parts', $3::jsonb), $2, "
		"       coalesce($4, 'interactive')::lhdiscord.outbox_lane "
		"FROM lhdiscord.discord_accounts a WHERE a.user_id = $1 AND a.status = 'active' "
		"ORDER BY a.id",
		.nargs = 4,
		.argtypes = {INT8OID, TEXTOID, TEXTOID, TEXTOID}
	};
	/* Before ALTER EXTENSION UPDATE to 0.6.0: no lane (nor its argument). */
	static LhdPlan queue_plan_0_5 = {
		.sql = "INSERT INTO lhdiscord.outbox (kind, discord_user_id, user_id, payload, reason) "
		"SELECT 'dm', a.discord_user_id, a.user_id, "
		"       jsonb_build_object('notification', $2::text, 'parts', $3::jsonb), $2 "
		"FROM lhdiscord.discord_accounts a WHERE a.user_id = $1 AND a.status = 'active' "
		"ORDER BY a.id",
		.nargs = 3,
		.argtypes = {INT8OID, TEXTOID, TEXTOID}
	};
	char	   *lane = lhd_require_caller_lane(fcinfo, 3);
	char		nulls[4] = {' ', ' ', ' ', lane ? ' ' : 'n'};
	int64		user_id;
	char	   *name;
	char	   *content;
	char	  **parts;
	int			nparts;
	bool		isnull;
	bool		wants;
	StringInfoData json;
	Datum		values[4];
	int			queued;

	lhd_require_not_null(PG_ARGISNULL(0), "user_id");
	lhd_require_not_null(PG_ARGISNULL(1), "notification");
	user_id = PG_GETARG_INT64(0);
	name = text_to_cstring(PG_GETARG_TEXT_PP(1));

	/* The name is checked first: a typo is a bug, whatever the user wants. */
	if (in_list(not_dm, name))
		PG_RETURN_INT32(0);
	if (!in_list(supported, name))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown notification: %s", name)));

	SPI_connect();
	values[0] = Int64GetDatum(user_id);
	if (lhd_exec(&user_plan, values, NULL, true, 1) == 0)
		lhd_raise_no_user(user_id);
	wants = DatumGetBool(lhd_getattr(0, 1, &isnull));
	if (!wants || PG_ARGISNULL(2))
	{
		SPI_finish();
		PG_RETURN_INT32(0);
	}
	content = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (pg_mbstrlen(content) > NOTIFY_MAX_CHARS)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("notification content is too long"),
				 errdetail("It has %d characters; at most %d (%d messages) are sent.",
						   pg_mbstrlen(content), NOTIFY_MAX_CHARS, NOTIFY_MAX_CHARS / LHD_MESSAGE_MAX)));
	/* Whitespace only splits into no parts: nothing to send. */
	nparts = lhd_split_message(content, LHD_MESSAGE_MAX, &parts);
	if (nparts == 0)
	{
		SPI_finish();
		PG_RETURN_INT32(0);
	}
	initStringInfo(&json);
	lhd_json_append_array(&json, parts, nparts);

	values[1] = CStringGetTextDatum(name);
	values[2] = CStringGetTextDatum(json.data);
	values[3] = lane ? CStringGetTextDatum(lane) : (Datum) 0;
	queued = PG_NARGS() > 3 ? lhd_exec(&queue_plan, values, nulls, false, 0)
		: lhd_exec(&queue_plan_0_5, values, nulls, false, 0);
	SPI_finish();
	PG_RETURN_INT32(queued);
}
