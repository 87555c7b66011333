# Failure classes: DMs closed (50007), unknown member (10007), unknown role
# (10011) and missing permissions (50013) fail after one attempt with a
# warning; 5xx and timeouts retry with backoff; a DM gives up once older
# than job_max_age, a role convergence never; a
# DM whose response is lost is retried with the same nonce and delivered once.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Utils;
use Test::More;

start_mock();
# This guild knows only the roles it lists; 900000000000000199 is above the bot.
mock_post('/_mock/guilds', {
	id => GUILD_ID,
	roles => [ '900000000000000101', '900000000000000104', '900000000000000199' ],
	privileged_roles => ['900000000000000199'],
	members => [ map { { id => "70000000000000000$_" } } 1 .. 6 ] });
mock_post('/_mock/users', { id => '700000000000000001', username => 'closed', dms_closed => JSON::PP::true });
mock_post('/_mock/users', { id => '700000000000000002', username => 'open' });

my $node = new_node('errors', conf => {
	'lhdiscord.max_attempts' => 3, 'lhdiscord.request_timeout' => 700 });
my $q = sub { $node->safe_psql('postgres', $_[0]) };
sub job_state { my ($q, $id) = @_; return $q->("SELECT state || '|' || attempts FROM lhdiscord.outbox WHERE id = $id"); }
sub settled { my ($q, $id) = @_; return wait_for(sub { $q->("SELECT state FROM lhdiscord.outbox WHERE id = $id") =~ /^(done|failed|dead)$/ }, 30); }
sub dm { my ($q, $to, $text) = @_;
	return $q->("INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload) VALUES ('dm', '$to', jsonb_build_object('content', '$text')) RETURNING id"); }

# 50007: DMs closed.
my $id = dm($q, '700000000000000001', 'hello closed');
ok(settled($q, $id), 'closed DM settled');
is(job_state($q, $id), 'failed|1', '50007 fails after one attempt');
like($q->("SELECT last_error FROM lhdiscord.outbox WHERE id = $id"), qr/50007/, 'last_error names the code');

# 10007: the Discord user is not a member of the guild.
$q->(q{
	SELECT lhdiscord.map_role('traveler', '900000000000000101');
	INSERT INTO lhdiscord.users (user_id, username, membership_level)
	  SELECT g, 'u' || g, 'traveler' FROM generate_series(1, 9) g;
});
$id = $q->(q{SELECT (lhdiscord.link_account(9, '799999999999999999', 'stranger')).id});
$id = $q->("SELECT id FROM lhdiscord.outbox WHERE discord_user_id = '799999999999999999'");
ok(settled($q, $id), 'unknown member settled');
is(job_state($q, $id), 'failed|1', '10007 fails after one attempt');
like($q->("SELECT last_error FROM lhdiscord.outbox WHERE id = $id"), qr/10007/, 'last_error names 10007');

# 10011: a role the guild does not have.  50013: a role above the bot.
$q->(q{SELECT lhdiscord.map_role('resident', '900000000000000102')});
$q->(q{UPDATE lhdiscord.users SET membership_level = 'resident' WHERE user_id = 1});
$q->(q{SELECT lhdiscord.link_account(1, '700000000000000003', 'u1')});
$id = $q->("SELECT id FROM lhdiscord.outbox WHERE discord_user_id = '700000000000000003'");
ok(settled($q, $id), 'unknown role settled');
is(job_state($q, $id), 'failed|1', '10011 fails after one attempt');
like($q->("SELECT last_error FROM lhdiscord.outbox WHERE id = $id"), qr/10011/, 'last_error names 10011');

$q->(q{SELECT lhdiscord.map_role('citizen', '900000000000000199')});
$q->(q{UPDATE lhdiscord.users SET membership_level = 'citizen' WHERE user_id = 2});
$q->(q{SELECT lhdiscord.link_account(2, '700000000000000004', 'u2')});
$id = $q->("SELECT id FROM lhdiscord.outbox WHERE discord_user_id = '700000000000000004' ORDER BY id DESC LIMIT 1");
ok(settled($q, $id), 'missing permission settled');
is(job_state($q, $id), 'failed|1', '50013 fails after one attempt');
my $log = slurp_file($node->logfile);
like($log, qr/WARNING:  lhdiscord: outbox job \d+ failed without retry: POST \/channels\/\{channel_id\}\/messages: HTTP 403, Discord code 50007/,
	'50007 logged as a warning');
like($log, qr/WARNING:  lhdiscord: .*10007/, '10007 logged as a warning');

# Transient: two 503s, then success.
mock_post('/_mock/faults', { method => 'PUT', path => '/roles/', status => 503, count => 2 });
$q->(q{SELECT lhdiscord.link_account(3, '700000000000000005', 'u3')});
$id = $q->("SELECT id FROM lhdiscord.outbox WHERE discord_user_id = '700000000000000005'");
ok(settled($q, $id), '503s settled');
like(job_state($q, $id), qr/^done\|[23]$/, '5xx retried with backoff, then done');

# Timeout: the request hangs once, is abandoned after request_timeout, retried.
mock_post('/_mock/faults', { method => 'PUT', path => '/roles/', hang => JSON::PP::true, count => 1 });
$q->(q{SELECT lhdiscord.link_account(4, '700000000000000006', 'u4')});
$id = $q->("SELECT id FROM lhdiscord.outbox WHERE discord_user_id = '700000000000000006'");
ok(settled($q, $id), 'timeout settled');
like(job_state($q, $id), qr/^done\|[23]$/, 'a timeout is retried, then done');
cmp_ok($q->('SELECT transport_errors FROM lhdiscord.worker_status'), '>=', 1, 'transport error counted');

# A DM that keeps failing is not dead after max_attempts: it gives up only
# once older than lhdiscord.job_max_age.
mock_post('/_mock/faults', { method => 'POST', path => '/messages$', status => 502, count => -1 });
$id = dm($q, '700000000000000002', 'never arrives');
ok(wait_for(sub { $q->("SELECT attempts FROM lhdiscord.outbox WHERE id = $id") > 4 }, 30),
	'the DM is retried past lhdiscord.max_attempts (3)');
is($q->("SELECT state FROM lhdiscord.outbox WHERE id = $id"), 'pending', 'and is still pending, not dead');
$q->("UPDATE lhdiscord.outbox SET created_at = now() - interval '2 days' WHERE id = $id");
ok(wait_for(sub { $q->("SELECT state FROM lhdiscord.outbox WHERE id = $id") eq 'dead' }, 30),
	'dead once older than lhdiscord.job_max_age');
like($q->("SELECT last_error FROM lhdiscord.outbox WHERE id = $id"), qr/HTTP 502/, 'last_error keeps the 502');

# A role convergence is never abandoned on transient failures.
mock_post('/_mock/faults', { path => '/roles/', status => 502, count => -1 });
$q->(q{UPDATE lhdiscord.users SET in_brig = true WHERE user_id = 3});
$id = $q->("SELECT id FROM lhdiscord.outbox WHERE discord_user_id = '700000000000000005' AND state IN ('pending', 'in_flight')");
ok(wait_for(sub { $q->("SELECT attempts FROM lhdiscord.outbox WHERE id = $id") > 4 }, 30),
	'the convergence is retried past lhdiscord.max_attempts');
$q->("UPDATE lhdiscord.outbox SET created_at = now() - interval '30 days' WHERE id = $id");
ok(wait_for(sub { $q->("SELECT attempts FROM lhdiscord.outbox WHERE id = $id") > 6 }, 30), 'and again, however old');
isnt($q->("SELECT state FROM lhdiscord.outbox WHERE id = $id"), 'dead', 'never dead');
mock_delete('/_mock/faults');
ok(settled($q, $id), 'converged once Discord answers');
is($q->("SELECT state FROM lhdiscord.outbox WHERE id = $id"), 'done', 'done');

# A DM whose response is lost: Discord created the message, we saw a 500.
# The retry carries the same nonce, so Discord returns the original message.
my $before = scalar(@{ mock_get('/_mock/messages') });
mock_post('/_mock/faults', { method => 'POST', path => '/messages$', status => 500, count => 1, process => JSON::PP::true });
my $seq = mock_get('/_mock/requests?since=0')->{last_seq};
$id = dm($q, '700000000000000002', 'exactly once please');
ok(settled($q, $id), 'lost-response DM settled');
like(job_state($q, $id), qr/^done\|2$/, 'retried once, then done');
my @posts = grep { $_->{path} =~ m{/messages$} } @{ mock_requests($seq) };
is(scalar(@posts), 2, 'the message was posted twice');
is($posts[0]{body}{nonce}, $posts[1]{body}{nonce}, 'with the same nonce');
my @got = grep { $_->{content} eq 'exactly once please' } @{ mock_get('/_mock/messages') };
is(scalar(@got), 1, 'and delivered exactly once');

$node->stop;
done_testing();
