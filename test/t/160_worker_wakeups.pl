# The worker never sleeps while a job is due (issue 11, findings 4 and 5):
# three DMs to one recipient queued together go out back to back, the role
# convergence that follows an OAuth guild join goes out right after the join,
# and a worker waiting for ALTER EXTENSION lhdiscord UPDATE drains within 2 s
# of it.  The safety-net poll is 60 s throughout, so no poll tick can explain
# a prompt delivery.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use HTTP::Tiny;
use LhdTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $SECRET = 'mock-client-secret-W4k3s';
my $REDIRECT = 'https://portal.example/auth/discord/callback';
my $RCPT = '961000000000000001';     # DM recipient (not linked: a DBA's DM)
my $ALICE = '961000000000000002';    # links through OAuth

start_mock(client_secret => $SECRET);
setup_guild();
mock_post('/_mock/users', { id => $RCPT, username => 'rcpt' });
mock_post('/_mock/users', { id => $ALICE, username => 'alice.d', global_name => 'Alice' });

# A query that never dies: undef when it fails (today's code lacks some of
# what the fixed worker provides; the other assertions must still run).
sub all_done
{
	my ($node, $where) = @_;
	my $v = q_try($node, "SELECT count(*) FROM lhdiscord.outbox WHERE state <> 'done'"
		  . ($where ? " AND $where" : ''));
	return defined $v && $v eq '0';
}

# Seq of the newest request the mock has recorded.
sub mock_seq { return mock_get('/_mock/requests?since=999999999')->{last_seq}; }

my $node = new_node('wakeups', conf => {
	'lhdiscord.poll_interval' => 60,
	'lhdiscord.client_id' => "'123456789012345678'",
	'lhdiscord.client_secret' => "'$SECRET'",
	'lhdiscord.redirect_uri' => "'$REDIRECT'",
	log_min_messages => 'info' });
my $q = sub { $node->safe_psql('postgres', $_[0]) };
$q->(q{
	SELECT lhdiscord.map_role('traveler', '900000000000000101');
	SELECT lhdiscord.map_role('verified', '900000000000000104');
	INSERT INTO lhdiscord.users (user_id, username, membership_level)
	  VALUES (1, 'alice', 'traveler');
});
is($q->('SHOW lhdiscord.poll_interval'), '1min', 'safety-net poll is a minute');
# Let the worker settle (token probe, housekeeping) before timing anything.
ok(wait_for(sub { ($q->('SELECT running FROM lhdiscord.worker_status')) eq 't' }, 30), 'worker running');
sleep 1;

#
# 1. Three DMs to one recipient, queued in one transaction.
#
my $seq0 = mock_seq();
$q->(qq{
	BEGIN;
	INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload) VALUES ('dm', '$RCPT', '{"content": "wake DM 1 of 3"}');
	INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload) VALUES ('dm', '$RCPT', '{"content": "wake DM 2 of 3"}');
	INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload) VALUES ('dm', '$RCPT', '{"content": "wake DM 3 of 3"}');
	COMMIT;
});
my $t_commit = time();
# Bounded well below the 60 s poll: a worker that waits for its poll tick
# fails here instead of passing slowly.
ok(wait_for(sub { all_done($node, "kind = 'dm'") }, 15), 'the three DMs are done (well before a poll tick)');
my @posts = grep { $_->{method} eq 'POST' && $_->{path} =~ m{/channels/\d+/messages$} && ($_->{status} // 0) == 200 }
  @{ mock_requests($seq0) };
is(scalar(@posts), 3, 'three message posts reached the mock');
is_deeply([ map { $_->{body}{content} } @posts ], [ map { "wake DM $_ of 3" } 1 .. 3 ],
	'posted in the order queued');
if (@posts == 3)
{
	my $spread = $posts[2]{t} - $posts[0]{t};
	cmp_ok($spread, '<', 1.0, sprintf('the three DMs arrived within one second of each other (%.3f s)', $spread));
	cmp_ok($posts[0]{t} - $t_commit, '<', 1.0, 'the first went out within a second of the commit');
}
else
{
	fail('the three DMs arrived within one second of each other');
	fail('the first went out within a second of the commit');
}
my @msgs = grep { $_->{content} =~ /^wake DM/ } @{ mock_get('/_mock/messages') };
is_deeply([ map { $_->{content} } @msgs ], [ map { "wake DM $_ of 3" } 1 .. 3 ],
	'the mock holds each DM once, in order');
is(scalar(grep { $_->{recipient_id} ne $RCPT } @msgs), 0, 'all to the one recipient');

# The same after one transient failure of the first DM: while it waits
# for its (100 ms) retry, the two DMs queued behind it are pending with a
# run_after in the past; the worker must still wake for the retry, not sleep
# until its poll tick.
mock_post('/_mock/faults', { method => 'POST', path => '/channels/\\d+/messages$', status => 503, count => 1 });
$seq0 = mock_seq();
$q->(qq{
	INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload)
	  SELECT 'dm', '$RCPT', jsonb_build_object('content', 'retry DM ' || g || ' of 3') FROM generate_series(1, 3) g;
});
ok(wait_for(sub { all_done($node, "kind = 'dm'") }, 15), 'after a 503, the three DMs are done (well before a poll tick)');
my @tries = grep { $_->{method} eq 'POST' && $_->{path} =~ m{/channels/\d+/messages$} } @{ mock_requests($seq0) };
my @failed = grep { ($_->{status} // 0) == 503 } @tries;
@posts = grep { ($_->{status} // 0) == 200 } @tries;
is(scalar(@failed), 1, 'the first post was answered 503 once');
is_deeply([ map { $_->{body}{content} } @posts ], [ map { "retry DM $_ of 3" } 1 .. 3 ],
	'then the three DMs were posted, in order');
if (@failed == 1 && @posts == 3)
{
	my $retry = $posts[0]{t} - $failed[0]{t};
	my $spread = $posts[2]{t} - $posts[0]{t};
	cmp_ok($retry, '<', 1.5, sprintf('the retry went out after its backoff, not a poll tick (%.3f s)', $retry));
	cmp_ok($spread, '<', 1.0, sprintf('the three DMs arrived within one second of each other (%.3f s)', $spread));
}
else
{
	fail('the retry went out after its backoff, not a poll tick');
	fail('the three DMs arrived within one second of each other');
}
is($q->(q{SELECT attempts FROM lhdiscord.outbox WHERE payload->>'content' = 'retry DM 1 of 3'}), '2',
	'the first DM took two attempts');

#
# 2. OAuth link: the guild join, then the roles, back to back.
#
my $http = HTTP::Tiny->new(max_redirect => 0);
my $url = $q->('SELECT lhdiscord.begin_oauth(1)');
mock_post('/_mock/oauth/next_user', { user_id => $ALICE });
my $res = $http->get($url);
is($res->{status}, 302, 'the mock authorizes and redirects');
my ($code) = ($res->{headers}{location} // '') =~ /[?&]code=([^&]+)/;
my ($state) = ($res->{headers}{location} // '') =~ /[?&]state=([^&]+)/;
$seq0 = mock_seq();
my ($ret, $out, $err) = $node->psql('postgres',
	"SELECT discord_user_id, status FROM lhdiscord.complete_oauth(1, '$code', '$state')");
is($out, "$ALICE|active", 'complete_oauth linked the account') or diag($err);
ok(wait_for(sub { all_done($node) }, 15), 'guild join and role convergence done (well before a poll tick)');
my @g = grep { $_->{path} =~ m{/guilds/\d+/members/$ALICE(/|$)} } @{ mock_requests($seq0) };
my ($join) = grep { $_->{method} eq 'PUT' && $_->{path} =~ m{/members/$ALICE$} } @g;
my @roles = grep { $_->{method} eq 'PUT' && $_->{path} =~ m{/members/$ALICE/roles/\d+$} } @g;
ok($join, 'the guild join (PUT member) reached the mock');
is($join ? $join->{status} : undef, 201, 'the join answered 201');
is(scalar(@roles), 2, 'two role PUTs followed');
if ($join && @roles)
{
	my $first = $roles[0]{t} - $join->{t};
	my $last = $roles[-1]{t} - $join->{t};
	cmp_ok($first, '>=', 0, 'the roles came after the join');
	cmp_ok($last, '<', 1.0, sprintf('every role call within one second of the join (%.3f s)', $last));
}
else
{
	fail('the roles came after the join');
	fail('every role call within one second of the join');
}
is_deeply(mock_get('/_mock/members/' . GUILD_ID . "/$ALICE")->{roles},
	[ '900000000000000101', '900000000000000104' ], 'the member holds the desired roles');

# Again, the join failing once (503): the roles job waits behind the join's
# retry, and must not be slept on.
my $BOB = '961000000000000003';
mock_post('/_mock/users', { id => $BOB, username => 'bob.d' });
$q->(q{INSERT INTO lhdiscord.users (user_id, username, membership_level) VALUES (2, 'bob', 'traveler')});
$url = $q->('SELECT lhdiscord.begin_oauth(2)');
mock_post('/_mock/oauth/next_user', { user_id => $BOB });
$res = $http->get($url);
($code) = ($res->{headers}{location} // '') =~ /[?&]code=([^&]+)/;
($state) = ($res->{headers}{location} // '') =~ /[?&]state=([^&]+)/;
mock_post('/_mock/faults', { method => 'PUT', path => "/members/$BOB\$", status => 503, count => 1 });
$seq0 = mock_seq();
($ret, $out, $err) = $node->psql('postgres',
	"SELECT discord_user_id, status FROM lhdiscord.complete_oauth(2, '$code', '$state')");
is($out, "$BOB|active", 'second account linked') or diag($err);
ok(wait_for(sub { all_done($node) }, 15), 'after a 503 on the join: join and roles done (well before a poll tick)');
@g = grep { $_->{path} =~ m{/guilds/\d+/members/$BOB(/|$)} } @{ mock_requests($seq0) };
my @joins = grep { $_->{method} eq 'PUT' && $_->{path} =~ m{/members/$BOB$} } @g;
@roles = grep { $_->{method} eq 'PUT' && $_->{path} =~ m{/members/$BOB/roles/\d+$} } @g;
is_deeply([ map { $_->{status} } @joins ], [ 503, 201 ], 'the join failed once (503), then succeeded (201)');
is(scalar(@roles), 2, 'two role PUTs followed');
if (@joins == 2 && @roles)
{
	my $retry = $joins[1]{t} - $joins[0]{t};
	my $last = $roles[-1]{t} - $joins[1]{t};
	cmp_ok($retry, '<', 1.5, sprintf('the join was retried after its backoff, not a poll tick (%.3f s)', $retry));
	cmp_ok($roles[0]{t} - $joins[1]{t}, '>=', 0, 'the roles came after the successful join');
	cmp_ok($last, '<', 1.0, sprintf('every role call within one second of the join (%.3f s)', $last));
}
else
{
	fail('the join was retried after its backoff, not a poll tick');
	fail('the roles came after the successful join');
	fail('every role call within one second of the join');
}
is_deeply(mock_get('/_mock/members/' . GUILD_ID . "/$BOB")->{roles},
	[ '900000000000000101', '900000000000000104' ], 'the second member holds the desired roles');
$node->stop;

#
# 3. A worker waiting for ALTER EXTENSION lhdiscord UPDATE drains at once.
#
mock_post('/_mock/reset');
setup_guild();
mock_post('/_mock/users', { id => $RCPT, username => 'rcpt' });
my $up = new_node('update', no_extension => 1, conf => { 'lhdiscord.poll_interval' => 60 });
my $uq = sub { $up->safe_psql('postgres', $_[0]) };
$uq->(q{CREATE EXTENSION lhdiscord VERSION '0.5.0'});
is($uq->(q{SELECT extversion FROM pg_extension WHERE extname = 'lhdiscord'}), '0.5.0', 'extension at 0.5.0');
my $default = $uq->(q{SELECT default_version FROM pg_available_extensions WHERE name = 'lhdiscord'});
isnt($default, '0.5.0', "the library is newer ($default)");
$uq->(qq{
	INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload)
	  SELECT 'dm', '$RCPT', jsonb_build_object('content', 'after update ' || g) FROM generate_series(1, 3) g;
});
my $waiting = qr/lhdiscord worker: database "postgres" has lhdiscord 0\.5\.0 but the library is [0-9.]+; waiting/;
ok(wait_for(sub { slurp_file($up->logfile) =~ $waiting }, 15), 'the worker logs that the versions differ and waits');
sleep 2;
is(scalar(@{ mock_get('/_mock/messages') }), 0, 'nothing is sent while the versions differ');
is($uq->(q{SELECT count(*) FROM lhdiscord.outbox WHERE state = 'pending'}), '3', 'the DMs stay pending');
my @lines = (slurp_file($up->logfile) =~ /$waiting/g);
is(scalar(@lines), 1, 'the wait is logged once, not on every check');

$uq->('ALTER EXTENSION lhdiscord UPDATE');
my $t_update = time();
is($uq->(q{SELECT extversion FROM pg_extension WHERE extname = 'lhdiscord'}), $default, "updated to $default");
my $drained = wait_for(sub { all_done($up) }, 15);
my $took = time() - $t_update;
ok($drained, 'the queue drains after the update');
cmp_ok($took, '<=', 2.0, sprintf('within 2 s of ALTER EXTENSION UPDATE (%.2f s)', $took));
is_deeply([ sort map { $_->{content} } @{ mock_get('/_mock/messages') } ],
	[ map { "after update $_" } 1 .. 3 ], 'each DM delivered once');
unlike(slurp_file($up->logfile), qr/terminated by signal|terminating any other active server processes/,
	'no crash of the cluster');

$up->stop;
done_testing();
