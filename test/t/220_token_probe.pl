# One request to learn a bad token (issue 13):
#  1. a wrong bot token, 50 jobs queued, default max_concurrency (16): the
#     first request after start is a single probe, GET /users/@me; at most 2
#     requests are answered 401, then the worker is paused and sends nothing
#     more (no job request at all);
#  2. fixing the token in postgresql.conf and reloading: one probe with the
#     good token, then the queue drains;
#  3. a reload that changes nothing sends no probe; a reload that changes the
#     token sends exactly one probe, before any job request;
#  4. after a restart the first request is the probe again;
#  5. a 401 in the middle of traffic (max_concurrency 4, 200 ms answers)
#     stops new sends at once: at most the requests already in flight are
#     answered 401, then nothing is sent.
# The token is always changed in postgresql.conf (with the test cluster's
# log_statement = all an ALTER SYSTEM would log it).
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $N = 50;
my $CONC = 4;
my $ME = '/api/v10/users/@me';
my $T2 = 'lhd-test-bot-token.second.K2pX7';

sub mock_seq { return mock_get('/_mock/requests?since=999999999999')->{last_seq}; }

# Bot requests recorded after seq $since, in arrival order.
sub bot_requests_since
{
	my ($since) = @_;
	return [ grep { $_->{path} =~ m{^/api/v10/} } @{ mock_requests($since) } ];
}

sub probes { return [ grep { $_->{method} eq 'GET' && $_->{path} eq $ME } @{ $_[0] } ]; }

sub undone
{
	my ($node) = @_;
	return q_try($node, "SELECT count(*) FROM lhdiscord.outbox WHERE state IN ('pending', 'in_flight')");
}

start_mock();
setup_guild(members => [ map { { id => sprintf('7%017d', $_) } } 1 .. $N ]);
my $node = new_node('probe', bot_token => 'not-the-right-token',
	conf => { 'lhdiscord.poll_interval' => 1 });
$node->safe_psql('postgres', qq{
	SELECT lhdiscord.map_role('traveler', '900000000000000101');
	SELECT lhdiscord.map_role('resident', '900000000000000102');
	SELECT lhdiscord.map_role('citizen', '900000000000000103');
	INSERT INTO lhdiscord.users (user_id, username, membership_level)
	  SELECT g, 'u' || g, 'traveler' FROM generate_series(1, $N) g;
	-- Roles known (none), so every link is one PUT, all ready at once: the
	-- pipeline would fill with requests if the token were not probed first.
	INSERT INTO lhdiscord.role_state (discord_user_id, role_ids)
	  SELECT '7' || lpad(g::text, 17, '0'), '{}' FROM generate_series(1, $N) g;
	SELECT count(lhdiscord.link_account(g, '7' || lpad(g::text, 17, '0'), 'u' || g)) FROM generate_series(1, $N) g;
});

# 1. The bad token.
ok(wait_for(sub { (q_try($node, 'SELECT paused FROM lhdiscord.worker_status') // '') eq 't' }, 30,
	'the pause'), 'worker paused after the probe was answered 401');
my $reqs = bot_requests_since(0);
ok(scalar(@$reqs) >= 1, 'at least one request was sent');
is($reqs->[0]{method} . ' ' . $reqs->[0]{path}, "GET $ME", 'the first request after start is GET /users/@me');
is($reqs->[0]{headers}{authorization}, 'Bot <redacted:bad>', 'the probe carries the (bad) bot token');
my $n401 = grep { ($_->{status} // 0) == 401 } @$reqs;
cmp_ok($n401, '<=', 2, "at most 2 requests answered 401 ($n401)");
cmp_ok(mock_stats()->{unauthorized_401}, '<=', 2, 'the mock counts at most 2 401s');
sleep 5;
$reqs = bot_requests_since(0);
cmp_ok(scalar(@$reqs), '<=', 2, 'still at most 2 requests 5 s into the pause (' . scalar(@$reqs) . ')');
is(scalar(grep { $_->{path} ne $ME } @$reqs), 0, 'no job request was sent with the bad token');
like(q_try($node, 'SELECT pause_reason FROM lhdiscord.worker_status') // '', qr/401/, 'worker_status gives the reason');
is(q_try($node, "SELECT count(*) FROM lhdiscord.outbox WHERE state IN ('failed', 'dead')"), '0',
	'no job failed or died because of the bad token');
cmp_ok(undone($node) // 0, '>=', $N, 'the links wait in the queue');
cmp_ok(q_try($node, 'SELECT invalid_requests_10min FROM lhdiscord.worker_status') // 99, '<=', 2,
	'worker_status counts at most 2 invalid requests');

# 2. The DBA fixes the token and reloads.
my $seq = mock_seq();
$node->append_conf('postgresql.conf', "lhdiscord.bot_token = '" . BOT_TOKEN . "'");
$node->reload;
ok(wait_for(sub { (undone($node) // 1) eq '0' }, 60, 'the drain after the fix'),
	'after the token is fixed and reloaded the queue drains');
is(q_try($node, 'SELECT paused FROM lhdiscord.worker_status'), 'f', 'no longer paused');
$reqs = bot_requests_since($seq);
ok(@$reqs > 1, 'requests were sent after the reload (' . scalar(@$reqs) . ')');
is(($reqs->[0]{method} // '') . ' ' . ($reqs->[0]{path} // ''), "GET $ME", 'the first request after the reload is the probe');
is($reqs->[0]{status}, 200, 'the probe with the good token is answered 200');
is($reqs->[0]{headers}{authorization}, 'Bot <redacted:ok>', 'the probe carries the fixed token');
is(scalar(@{ probes($reqs) }), 1, 'exactly one probe after the fix');
is(scalar(grep { ($_->{status} // 0) == 401 } @$reqs), 0, 'no 401 after the fix');
is_deeply(mock_get('/_mock/members/' . GUILD_ID . '/700000000000000007')->{roles}, ['900000000000000101'],
	'the queued work reached Discord');

# 3a. A reload that changes nothing: no probe.
$seq = mock_seq();
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
sleep 2;
$node->safe_psql('postgres', q{UPDATE lhdiscord.users SET membership_level = 'resident' WHERE user_id = 1});
ok(wait_for(sub { (undone($node) // 1) eq '0' }, 30), 'a change after a no-op reload is sent');
$reqs = bot_requests_since($seq);
is(scalar(@{ probes($reqs) }), 0, 'a reload that changes neither token nor base URL sends no probe');
ok(scalar(grep { $_->{path} =~ m{/roles/} } @$reqs) >= 1, 'the change itself was sent');

# 3b. A reload that changes the token: exactly one probe, before the work.
mock_post('/_mock/config', { bot_token => $T2 });
$seq = mock_seq();
$node->append_conf('postgresql.conf', "lhdiscord.bot_token = '$T2'");
$node->reload;
# (The probe may go out at once or just before the next request: either way
# it is the first request and there is exactly one.)
sleep 1;
$node->safe_psql('postgres', q{UPDATE lhdiscord.users SET membership_level = 'resident' WHERE user_id = 2});
ok(wait_for(sub { (undone($node) // 1) eq '0' }, 30), 'the work after the token change is sent');
sleep 1;
$reqs = bot_requests_since($seq);
is(scalar(@{ probes($reqs) }), 1, 'a reload that changes the token sends exactly one probe');
is(($reqs->[0]{path} // ''), $ME, 'the probe is the first request after the token change');
is($reqs->[0]{status}, 200, 'the new token is accepted');
is(scalar(grep { ($_->{status} // 0) == 401 } @$reqs), 0, 'no 401 with the new token');
is(q_try($node, 'SELECT paused FROM lhdiscord.worker_status'), 'f', 'not paused');

# 4. A restart: the first request is the probe again.
$seq = mock_seq();
$node->restart;
$node->safe_psql('postgres', q{UPDATE lhdiscord.users SET membership_level = 'resident' WHERE user_id = 3});
ok(wait_for(sub { (undone($node) // 1) eq '0' }, 30), 'the work after a restart is sent');
$reqs = bot_requests_since($seq);
is(($reqs->[0]{method} // '') . ' ' . ($reqs->[0]{path} // ''), "GET $ME", 'the first request after a restart is the probe');
is(scalar(@{ probes($reqs) }), 1, 'one probe after the restart');

# 5. The token is revoked on Discord's side in the middle of traffic: the
# requests in flight (at most max_concurrency) are answered 401, nothing
# new is sent after the first 401, and the worker pauses.
$node->append_conf('postgresql.conf', "lhdiscord.max_concurrency = $CONC");
$node->reload;
sleep 1;
mock_post('/_mock/config', { latency_ms => 200 });
$seq = mock_seq();
$node->safe_psql('postgres', q{UPDATE lhdiscord.users SET membership_level = 'citizen' WHERE user_id > 3});
ok(wait_for(sub { scalar(@{ bot_requests_since($seq) }) >= 8 }, 30, 'traffic'), 'traffic is flowing');
mock_post('/_mock/config', { bot_token => 'revoked-on-discords-side.Q0' });
ok(wait_for(sub { (q_try($node, 'SELECT paused FROM lhdiscord.worker_status') // '') eq 't' }, 30, 'the pause'),
	'a 401 in the middle of traffic pauses the worker');
sleep 1;
my $at_pause = scalar(@{ bot_requests_since($seq) });
sleep 3;
$reqs = bot_requests_since($seq);
is(scalar(@$reqs), $at_pause, 'nothing more is sent once paused');
$n401 = grep { ($_->{status} // 0) == 401 } @$reqs;
cmp_ok($n401, '>=', 1, 'the revoked token got a 401');
cmp_ok($n401, '<=', $CONC, "only requests already in flight were answered 401 ($n401, max_concurrency $CONC)");
is(q_try($node, "SELECT count(*) FROM lhdiscord.outbox WHERE state IN ('failed', 'dead')"), '0',
	'no job failed or died because of the revoked token');
cmp_ok(undone($node) // 0, '>', 0, 'the remaining work waits');
mock_post('/_mock/config', { latency_ms => 0 });

$node->stop;
done_testing();
