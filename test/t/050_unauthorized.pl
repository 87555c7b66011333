# A bad bot token: the worker pauses after the first 401, sends (almost)
# nothing more, says so in worker_status and the log, and resumes when the
# configuration is reloaded with a good token.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

start_mock();
setup_guild(members => [ map { { id => sprintf('6%017d', $_) } } 1 .. 50 ]);
my $node = new_node('unauth', bot_token => 'not-the-right-token',
	conf => { 'lhdiscord.poll_interval' => 1 });
$node->safe_psql('postgres', q{
	SELECT lhdiscord.map_role('traveler', '900000000000000101');
	INSERT INTO lhdiscord.users (user_id, username, membership_level)
	  SELECT g, 'u' || g, 'traveler' FROM generate_series(1, 50) g;
	SELECT count(lhdiscord.link_account(g, '6' || lpad(g::text, 17, '0'), 'u' || g)) FROM generate_series(1, 50) g;
});

ok(wait_for(sub { $node->safe_psql('postgres', 'SELECT paused FROM lhdiscord.worker_status') eq 't' }, 30),
	'worker paused after a 401');
my $after_first = mock_stats()->{bot_requests};
cmp_ok($after_first, '<=', 3, "only the first request(s) were sent ($after_first)");
sleep 15;
my $later = mock_stats()->{bot_requests};
cmp_ok($later - $after_first, '<', 10, 'fewer than 10 requests while paused (' . ($later - $after_first) . ')');
is(mock_stats()->{unauthorized_401}, $later, 'every request sent was a 401');
like($node->safe_psql('postgres', 'SELECT pause_reason FROM lhdiscord.worker_status'), qr/401/,
	'worker_status gives the reason');
like(slurp_file($node->logfile), qr/WARNING:  lhdiscord: Discord answered 401 Unauthorized: the bot token was rejected; all Discord sending is paused/,
	'the pause is logged');
unlike(slurp_file($node->logfile), qr/not-the-right-token/, 'the token itself is never logged');
is($node->safe_psql('postgres', "SELECT count(*) FROM lhdiscord.outbox WHERE state IN ('dead', 'failed')"), '0',
	'no job failed or died because of the pause');

# The DBA fixes the token and reloads: sending resumes.
# (In postgresql.conf, as a DBA would: with the test cluster's
# log_statement = all, an ALTER SYSTEM statement would log the value itself.)
$node->append_conf('postgresql.conf', "lhdiscord.bot_token = '" . BOT_TOKEN . "'");
$node->reload;
ok(wait_for(sub {
	$node->safe_psql('postgres', "SELECT count(*) FROM lhdiscord.outbox WHERE state <> 'done'") eq '0' }, 60),
	'after reload every job is done');
is($node->safe_psql('postgres', 'SELECT paused FROM lhdiscord.worker_status'), 'f', 'no longer paused');
# The postmaster logs "parameter ... changed to ..." on a reload; a secret's
# value must not be part of that (nor of anything else in the log).
my $log = slurp_file($node->logfile);
my $good = BOT_TOKEN;
unlike($log, qr/\Q$good\E/, 'the new token is not logged by the reload either');
unlike($log, qr/parameter "lhdiscord\.bot_token" changed/, 'the reload does not report the secret at all');


# No bot token at all: the same pause, with its own reason, and no request.
$node->append_conf('postgresql.conf', "lhdiscord.bot_token = ''");
$node->reload;
my $before = mock_stats()->{bot_requests};
$node->safe_psql('postgres', q{UPDATE lhdiscord.users SET membership_level = 'resident' WHERE user_id = 1});
ok(wait_for(sub { $node->safe_psql('postgres', 'SELECT paused FROM lhdiscord.worker_status') eq 't' }, 30),
	'an empty bot token pauses sending');
is($node->safe_psql('postgres', 'SELECT pause_reason FROM lhdiscord.worker_status'), 'lhdiscord.bot_token is not set',
	'worker_status says why');
sleep 3;
is(mock_stats()->{bot_requests} - $before, 0, 'nothing was sent');
is($node->safe_psql('postgres', "SELECT state, attempts FROM lhdiscord.outbox WHERE user_id = 1 AND state <> 'done'"),
	'pending|0', 'the job waits, its attempts untouched');
my @warned = (slurp_file($node->logfile) =~ /WARNING:  lhdiscord: lhdiscord\.bot_token is not set; all Discord sending is paused/g);
is(scalar(@warned), 1, 'the pause is logged once');

$node->stop;
done_testing();
