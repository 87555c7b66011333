# The Gateway worker against the mock's Gateway: a leaver is de-entitled
# within a second, with the event as evidence; RESUME loses no event; a
# refused resume re-identifies and lists everyone again; a zombie connection
# is found within 1.5 heartbeat intervals; 4004 and 4014 stop reconnecting
# with an alarm naming the fix; IDENTIFY stays one per 5 s in a storm.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use HTTP::Tiny;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $ENT = '900000000000000131';    # hauling.member
my $OTHER = '900000000000000102';
my ($A, $B, $C) = ('910000000000000001', '910000000000000002', '910000000000000003');
my $HB = 1000;                     # the mock's heartbeat interval, ms

start_mock(gateway => 1);
mock_post('/_mock/gateway/config', { heartbeat_interval => $HB });
setup_guild(members => [
	{ id => $A, username => 'alice.d', roles => [$ENT] },
	{ id => $B, username => 'bob.d', roles => [$ENT] },
	{ id => $C, username => 'carol.d', roles => [] } ]);

my $node = new_node('gateway', no_extension => 1, conf => {
	'lhdiscord.gateway' => 'on',
	'lhdiscord.reconcile_interval' => 0 });
my $q = sub { $node->safe_psql('postgres', $_[0]) };
# One transaction: the Gateway worker starts once the extension exists, and
# finds the portal's users already there.
$q->(qq{
	BEGIN;
	CREATE EXTENSION lhdiscord;
	SELECT lhdiscord.map_role('hauling.member', '$ENT');
	INSERT INTO lhdiscord.users (user_id, username, membership_level) VALUES
	  (1, 'alice', 'citizen'), (2, 'bob', 'citizen'), (3, 'carol', 'citizen');
	SELECT lhdiscord.link_account(1, '$A', 'alice.d');
	SELECT lhdiscord.link_account(2, '$B', 'bob.d');
	SELECT lhdiscord.link_account(3, '$C', 'carol.d');
	COMMIT;
});
my $ws = sub { $q->("SELECT $_[0] FROM lhdiscord.worker_status") };

is($q->(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lhdiscord gateway'}), '1',
	'the Gateway worker runs as "lhdiscord gateway"');
ok(wait_for(sub { $ws->('gateway_seeded') eq 't' }, 45), 'the member listing of the new session is complete')
  or diag($q->('SELECT gateway_state, gateway_alarm, last_error FROM lhdiscord.worker_status'));
my $snap = $ws->('gateway_snapshot_id');
is($q->("SELECT source || ' ' || complete || ' ' || trusted || ' ' || member_count FROM lhdiscord.member_snapshots WHERE id = $snap"),
	'gateway true true 3', 'a complete, trusted gateway snapshot of the 3 members');
is($q->('SELECT snapshot_id FROM lhdiscord.access_context()'), $snap, 'it is the entitlement evidence');
is($q->('SELECT snapshot_fresh FROM lhdiscord.access_context()'), 't', 'and counts as fresh');
is($q->(q{SELECT string_agg(user_id || ':' || status, ',' ORDER BY user_id) FROM lhdiscord.users}),
	'1:active,2:active,3:suspended', 'the reconcile after the listing: carol lacks the role');
my $st = mock_get('/_mock/gateway/stats');
is($st->{identifies}, 1, 'one IDENTIFY');
is($st->{chunk_requests}, 1, 'one REQUEST_GUILD_MEMBERS');

# The entitlement role removed on Discord: suspended at once.
my $t0 = time;
mock_delete("/_mock/members/@{[GUILD_ID]}/$A/roles/$ENT");
ok(wait_for(sub { $q->('SELECT status FROM lhdiscord.users WHERE user_id = 1') eq 'suspended' }, 1),
	'role removed on Discord: alice suspended within 1 s');
my $lat = time - $t0;
diag(sprintf('decision latency %.0f ms', $lat * 1000));
is($q->('SELECT session_revoked_at IS NOT NULL FROM lhdiscord.users WHERE user_id = 1'), 't', 'her sessions revoked');
my $ev = $q->(q{SELECT after_json->'evidence' FROM lhdiscord.audit_log
	WHERE action = 'entitlement.reconcile' AND subject_user_id = 1 ORDER BY id DESC LIMIT 1});
my $evidence = decode_json($ev);
is($evidence->{source} . ' ' . $evidence->{event} . ' ' . $evidence->{discord_user_id},
	"gateway GUILD_MEMBER_UPDATE $A", 'audited with the event as evidence');
like($evidence->{seq}, qr/^\d+$/, 'and its sequence number');
is($q->(q{SELECT after_json->>'snapshot_id' FROM lhdiscord.audit_log
	WHERE action = 'entitlement.reconcile' AND subject_user_id = 1 ORDER BY id DESC LIMIT 1}), $snap,
	'the live snapshot is the evidence');

# Given back: active again.
mock_put("/_mock/members/@{[GUILD_ID]}/$A/roles/$ENT");
ok(wait_for(sub { $q->('SELECT status FROM lhdiscord.users WHERE user_id = 1') eq 'active' }, 1),
	'role given back: alice active again within 1 s');

# A member leaving the guild.
mock_delete("/_mock/members/@{[GUILD_ID]}/$B");
ok(wait_for(sub { $q->('SELECT status FROM lhdiscord.users WHERE user_id = 2') eq 'suspended' }, 1),
	'bob left the guild: suspended within 1 s');
is($q->(q{SELECT after_json->'evidence'->>'event' FROM lhdiscord.audit_log
	WHERE action = 'entitlement.reconcile' AND subject_user_id = 2 ORDER BY id DESC LIMIT 1}),
	'GUILD_MEMBER_REMOVE', 'with the REMOVE as evidence');
is($q->("SELECT count(*) FROM lhdiscord.snapshot_members WHERE snapshot_id = $snap AND discord_user_id = '$B'"),
	'0', 'and he is gone from the live state');

# The live state equals the mock's members.
my $http = HTTP::Tiny->new(timeout => 10);
sub discord_members
{
	my $res = $http->get("http://127.0.0.1:$LhdTest::MOCK_PORT/api/v10/guilds/@{[GUILD_ID]}/members?limit=1000",
		{ headers => { Authorization => 'Bot ' . BOT_TOKEN } });
	die "members: $res->{status}" unless $res->{success};
	return join(';', map { $_->{user}{id} . ':' . join(',', sort @{ $_->{roles} }) }
		  sort { $a->{user}{id} cmp $b->{user}{id} } @{ decode_json($res->{content}) });
}
sub live_members
{
	my $s = $ws->('gateway_snapshot_id');
	return $q->(qq{SELECT string_agg(discord_user_id || ':' || array_to_string(ARRAY(SELECT r FROM unnest(role_ids) r ORDER BY r), ','), ';' ORDER BY discord_user_id)
		FROM lhdiscord.snapshot_members WHERE snapshot_id = $s});
}
is(live_members(), discord_members(), 'the live state is the guild');

# Dropped while events happen: RESUME replays them.
my $resumes = $ws->('gateway_resumes');
mock_post('/_mock/gateway/faults', { action => 'drop' });
mock_put("/_mock/members/@{[GUILD_ID]}/$C/roles/$OTHER");
mock_post('/_mock/members', { guild_id => GUILD_ID, id => $B, roles => [$ENT] });
mock_delete("/_mock/members/@{[GUILD_ID]}/$A/roles/$ENT");
ok(wait_for(sub { $ws->('gateway_resumes') > $resumes && $ws->('gateway_state') eq 'connected' }, 10),
	'the session was resumed');
ok(wait_for(sub { live_members() eq discord_members() }, 5), 'after RESUME no event is lost: the state equals the mock')
  or diag(live_members() . "\n" . discord_members());
is($ws->('gateway_snapshot_id'), $snap, 'in the same live snapshot (no new listing)');
ok(mock_get('/_mock/gateway/stats')->{replayed} >= 3, 'the mock replayed the missed events');
ok(wait_for(sub { $q->(q{SELECT string_agg(user_id || ':' || status, ',' ORDER BY user_id) FROM lhdiscord.users}) eq '1:suspended,2:active,3:suspended' }, 2),
	'and acted on them: alice out, bob back');

# A refused resume: a new session and a full listing.
mock_post('/_mock/gateway/faults', { action => 'refuse_resume', count => 1 });
mock_post('/_mock/gateway/faults', { action => 'drop' });
mock_put("/_mock/members/@{[GUILD_ID]}/$A/roles/$ENT");
ok(wait_for(sub { $ws->('gateway_snapshot_id') ne $snap && $ws->('gateway_seeded') eq 't' }, 45),
	'resume refused: re-identified and listed everyone again');
is(mock_get('/_mock/gateway/stats')->{identifies}, 2, 'with a second IDENTIFY');
is(live_members(), discord_members(), 'the new state equals the mock');
ok(wait_for(sub { $q->('SELECT status FROM lhdiscord.users WHERE user_id = 1') eq 'active' }, 2),
	'the change made while disconnected took effect (alice active)');
$snap = $ws->('gateway_snapshot_id');

# A zombie: heartbeats no longer ACKed.
my $conns = mock_get('/_mock/gateway/stats')->{connections_total};
$t0 = time;
mock_post('/_mock/gateway/faults', { action => 'stop_acks' });
ok(wait_for(sub { mock_get('/_mock/gateway/stats')->{connections_total} > $conns }, 5), 'the zombie was left');
my $zombie = time - $t0;
cmp_ok($zombie * 1000, '<=', 1.5 * $HB, sprintf('found within 1.5 heartbeat intervals (%.0f ms)', $zombie * 1000));
ok(wait_for(sub { $ws->('gateway_state') eq 'connected' }, 5), 'and resumed');

# RECONNECT (op 7): the client leaves and resumes.
$resumes = $ws->('gateway_resumes');
my $ids = mock_get('/_mock/gateway/stats')->{identifies};
mock_post('/_mock/gateway/faults', { action => 'reconnect' });
ok(wait_for(sub { $ws->('gateway_resumes') > $resumes && $ws->('gateway_state') eq 'connected' }, 5),
	'RECONNECT obeyed: resumed');
is(mock_get('/_mock/gateway/stats')->{identifies}, $ids, 'without a new IDENTIFY');

# 4004: no reconnect, an alarm that names the token.
mock_post('/_mock/gateway/faults', { action => 'close', code => 4004 });
ok(wait_for(sub { $ws->('gateway_state') eq 'stopped' }, 5), '4004: stopped');
like($ws->('gateway_alarm'), qr/4004.*lhdiscord\.bot_token/, 'the alarm names the fix (the bot token)');
$conns = mock_get('/_mock/gateway/stats')->{connections_total};
sleep 3;
is(mock_get('/_mock/gateway/stats')->{connections_total}, $conns, 'no reconnect in 3 s');
$q->('SELECT pg_reload_conf()');
ok(wait_for(sub { $ws->('gateway_state') eq 'connected' && $ws->('gateway_seeded') eq 't' }, 45), 'a reload connects again');
is($ws->('gateway_alarm'), '', 'the alarm is cleared');

# 4014: the intent.
mock_post('/_mock/gateway/faults', { action => 'close', code => 4014 });
ok(wait_for(sub { $ws->('gateway_state') eq 'stopped' }, 5), '4014: stopped');
like($ws->('gateway_alarm'), qr/4014.*GUILD_MEMBERS.*Developer Portal/, 'the alarm names the intent and where to enable it');
$conns = mock_get('/_mock/gateway/stats')->{connections_total};
sleep 2;
is(mock_get('/_mock/gateway/stats')->{connections_total}, $conns, 'no reconnect');
$q->('SELECT pg_reload_conf()');
ok(wait_for(sub { $ws->('gateway_state') eq 'connected' }, 45), 'a reload connects again');

# A reconnect storm: every session is invalidated as soon as it is ready;
# IDENTIFY keeps its pace.
my $before = mock_get('/_mock/gateway/stats')->{identifies};
my $until = time + 30;
while (time < $until && mock_get('/_mock/gateway/stats')->{identifies} < $before + 4)
{
	mock_post('/_mock/gateway/faults', { action => 'invalid_session', resumable => JSON::PP::false })
	  if $ws->('gateway_state') eq 'connected';
	usleep(100_000);
}
# Every IDENTIFY of the test, the storm's and those before it.
my @times = @{ mock_get('/_mock/gateway/stats')->{identify_times} };
cmp_ok(scalar(@times) - $before, '>=', 3, (scalar(@times) - $before) . ' IDENTIFYs in the storm');
my $min = 1e9;
$min = ($times[$_] - $times[$_ - 1] < $min ? $times[$_] - $times[$_ - 1] : $min) for 1 .. $#times;
cmp_ok($min, '>=', 5.0, sprintf('at most one IDENTIFY per 5 s (closest %.2f s apart)', $min));
is(mock_get('/_mock/gateway/stats')->{identifies_refused}{rate_limited}, 0, 'none refused by the mock in the whole test');
ok(wait_for(sub { $ws->('gateway_state') eq 'connected' && $ws->('gateway_seeded') eq 't' }, 45), 'connected again after the storm');
is(live_members(), discord_members(), 'with the state of the guild');

# A listing that shrank past lhdiscord.snapshot_max_shrink_percent is held:
# the previous trusted snapshot stays the evidence until it is accepted.
my $trusted = $ws->('gateway_snapshot_id');
mock_post('/_mock/guilds', { id => GUILD_ID, auto_roles => JSON::PP::true,
	members => [ { id => $A, username => 'alice.d', roles => [$ENT] } ] });
mock_post('/_mock/gateway/faults', { action => 'invalid_session', resumable => JSON::PP::false });
ok(wait_for(sub { $ws->('gateway_snapshot_id') ne $trusted && $ws->('gateway_seeded') eq 't' }, 45),
	'a new listing of a guild of 1 member');
my $held = $ws->('gateway_snapshot_id');
is($q->("SELECT trusted FROM lhdiscord.member_snapshots WHERE id = $held"), 'f', 'it is held by the shrink guard');
is($q->('SELECT snapshot_id FROM lhdiscord.access_context()'), $trusted, 'the previous trusted snapshot stays the evidence');
is($q->("SELECT count(*) FROM lhdiscord.audit_log WHERE action = 'entitlement.snapshot_held' AND after_json->>'source' = 'gateway'"),
	'1', 'audited as held, naming the Gateway');
$q->("SELECT lhdiscord.accept_snapshot($held)");
is($q->('SELECT snapshot_id FROM lhdiscord.access_context()'), $held, 'accepted: the live state is the evidence again');

# A Gateway URL without TLS to a host that is not loopback is refused (the
# bot token would travel in the clear): here a READY naming one as its
# resume URL, then a dropped connection.
mock_post('/_mock/gateway/dispatch', { t => 'READY',
	d => { v => 10, session_id => 'crafted', resume_gateway_url => 'ws://gateway.example.com',
		user => { id => '100000000000000099', username => 'bot' }, guilds => [] } });
mock_post('/_mock/gateway/faults', { action => 'drop' });
ok(wait_for(sub { $ws->('gateway_state') eq 'stopped' }, 10), 'a plain ws:// resume URL off loopback: stopped');
like($ws->('gateway_alarm'), qr{not wss://.*ws://gateway\.example\.com}, 'the alarm says why');
$q->('SELECT pg_reload_conf()');
ok(wait_for(sub { $ws->('gateway_state') eq 'connected' && $ws->('gateway_seeded') eq 't' }, 45),
	'a reload starts a new session from GET /gateway/bot');

# Never the cluster's problem.
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal|server process .* was terminated/, 'no crash');
unlike($log, qr/\Q@{[BOT_TOKEN]}\E/, 'the bot token never reaches the log');
is($q->('SELECT worker_errors FROM lhdiscord.worker_status'), '0', 'no worker errors');

# SIGTERM (a fast shutdown) ends the Gateway worker at once.
my $gpid = $ws->('gateway_pid');
$t0 = time;
$node->stop('fast');
my $stop = time - $t0;
ok(!kill(0, $gpid), 'the Gateway worker is gone after the shutdown');
cmp_ok($stop, '<', 3, sprintf('a fast shutdown with an open Gateway session took %.2f s', $stop));
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'and it exited cleanly');
done_testing();
