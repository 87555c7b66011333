# OAuth2 linking entirely in SQL against the mock: begin -> authorize ->
# complete -> linked with encrypted tokens, guild join, then roles; every
# failure (state reuse, expiry, wrong user, bad code, 500, timeout) raises the
# same message and writes nothing; token refresh, and a failed refresh marks
# the tokens stale; no secret reaches the log or the audit table.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use HTTP::Tiny;
use LhdTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $SECRET = 'mock-client-secret-Q7x91';
my $REDIRECT = 'https://portal.example/auth/discord/callback';
my $ALICE = '910000000000000001';
start_mock(client_secret => $SECRET);
mock_post('/_mock/guilds', { id => GUILD_ID, auto_roles => JSON::PP::true, members => [] });
mock_post('/_mock/users', { id => $ALICE, username => 'alice.d', global_name => 'Alice', avatar => 'a1b2c3' });

# Like a production application: statements are not logged (an app passes
# the code as a bind parameter), so any secret in the log came from lhdiscord.
my $node = new_node('oauth', conf => {
	log_statement => 'none', log_min_error_statement => 'panic',
	'lhdiscord.client_id' => "'123456789012345678'",
	'lhdiscord.client_secret' => "'$SECRET'",
	'lhdiscord.redirect_uri' => "'$REDIRECT'" });
my $q = sub { $node->safe_psql('postgres', $_[0]) };
$q->(q{
	SELECT lhdiscord.map_role('traveler', '900000000000000101');
	SELECT lhdiscord.map_role('verified', '900000000000000104');
	INSERT INTO lhdiscord.users (user_id, username, membership_level)
	  VALUES (1, 'alice', 'traveler'), (2, 'bob', 'traveler');
});

my @secrets = ($SECRET, 'a-wrong-client-secret');
my $http = HTTP::Tiny->new(max_redirect => 0);

# Begin, and let the mock "user" authorize: the mock redirects with a code.
sub authorize
{
	my ($user_id) = @_;
	my $url = $q->("SELECT lhdiscord.begin_oauth($user_id)");
	mock_post('/_mock/oauth/next_user', { user_id => $ALICE });
	my $res = $http->get($url);
	die "authorize: $res->{status}" unless $res->{status} == 302;
	my ($code) = $res->{headers}{location} =~ /[?&]code=([^&]+)/;
	my ($state) = $res->{headers}{location} =~ /[?&]state=([^&]+)/;
	push @secrets, $code;
	return ($url, $code, $state);
}

sub complete
{
	my ($user_id, $code, $state, $pre) = @_;
	my ($ret, $out, $err) = $node->psql('postgres',
		($pre // '') . "SELECT discord_user_id, username, global_name, avatar_hash, status, access_token "
		  . "FROM lhdiscord.complete_oauth($user_id, '$code', '$state')");
	return ($ret, $out, $err);
}

sub nothing_written
{
	return $q->(q{SELECT count(*) FROM lhdiscord.discord_accounts})
	  . '|' . $q->(q{SELECT count(*) FROM lhdiscord.outbox})
	  . '|' . $q->(q{SELECT count(*) FROM lhdiscord.audit_log});
}

my ($url, $code, $state) = authorize(1);
like($url, qr{^http://127\.0\.0\.1:\d+/oauth2/authorize\?response_type=code&client_id=123456789012345678&redirect_uri=https%3A%2F%2Fportal\.example%2Fauth%2Fdiscord%2Fcallback&scope=identify%20guilds\.join&state=[0-9a-f]{64}$},
	'authorize URL on the API host, with both scopes');

# Failures first: each raises the same message and writes nothing.
my $before = nothing_written();
my ($ret, $out, $err) = complete(2, $code, $state);
like($err, qr/ERROR:  Discord authorization failed\./, 'wrong user: failed');
is(nothing_written(), $before, 'wrong user: nothing written');

($ret, $out, $err) = complete(1, 'not-a-code', $state);
like($err, qr/ERROR:  Discord authorization failed\.\nDETAIL:  Discord refused the authorization code \(HTTP 400, invalid_grant\)/,
	'bad code: failed (invalid_grant)');
is(nothing_written(), $before, 'bad code: nothing written');

mock_post('/_mock/faults', { method => 'POST', path => '/oauth2/token', status => 500, count => 1 });
($ret, $out, $err) = complete(1, $code, $state);
like($err, qr/ERROR:  Discord authorization failed\./, 'Discord 500: failed');
is(nothing_written(), $before, 'Discord 500: nothing written');

mock_post('/_mock/faults', { method => 'POST', path => '/oauth2/token', hang => JSON::PP::true, count => 1 });
my $t0 = time();
($ret, $out, $err) = complete(1, $code, $state, 'SET lhdiscord.request_timeout = 800; ');
like($err, qr/ERROR:  Discord authorization failed\.\nDETAIL:  Discord could not be reached/, 'timeout: failed');
cmp_ok(time() - $t0, '<=', 5, 'the timeout is bounded');
is(nothing_written(), $before, 'timeout: nothing written');
# Query cancel (here: statement_timeout) interrupts the wait at once.
mock_post('/_mock/faults', { method => 'POST', path => '/oauth2/token', hang => JSON::PP::true, count => 1 });
$t0 = time();
($ret, $out, $err) = complete(1, $code, $state, 'SET statement_timeout = 500; SET lhdiscord.request_timeout = 60000; ');
like($err, qr/ERROR:  canceling statement due to statement timeout/, 'cancel honoured during the exchange');
cmp_ok(time() - $t0, '<=', 3, 'cancelled well before the request timeout');
is(nothing_written(), $before, 'cancelled: nothing written');
mock_delete('/_mock/faults');

# The happy path (the state survived the failures: they wrote nothing).
($ret, $out, $err) = complete(1, $code, $state);
is($ret, 0, 'complete_oauth succeeded') or diag($err);
is($out, "$ALICE|alice.d|Alice|a1b2c3|active|", 'linked account returned, no token in it');
is($q->(q{SELECT count(*) FROM lhdiscord.oauth_states WHERE used_at IS NOT NULL}), '1', 'state consumed');
my ($access, $refresh) = split /\|/, $q->(
	q{SELECT t.access_token, t.refresh_token FROM lhdiscord.discord_accounts a, lhdiscord.account_tokens(a.id) t});
ok(length($access) > 10 && length($refresh) > 10, 'tokens stored (decryptable by the superuser accessor)');
push @secrets, $access, $refresh;
is($q->(q{SELECT position(convert_to(t.access_token, 'UTF8') IN a.access_token)
	FROM lhdiscord.discord_accounts a, lhdiscord.account_tokens(a.id) t}), '0',
	'the access token is not stored in clear');
cmp_ok($q->(q{SELECT extract(epoch FROM token_expires_at - now())::int FROM lhdiscord.discord_accounts}), '>', 600000,
	'expiry from expires_in');

# The replay of a used state fails.
($ret, $out, $err) = complete(1, $code, $state);
like($err, qr/ERROR:  Discord authorization failed\.\nDETAIL:  The state was already used\./, 'state reuse: failed');

# An expired state fails.
my ($url2, $code2, $state2) = authorize(2);
$q->(q{UPDATE lhdiscord.oauth_states SET expires_at = now() - interval '1 second' WHERE used_at IS NULL});
($ret, $out, $err) = complete(2, $code2, $state2);
like($err, qr/DETAIL:  The state expired\./, 'expired state: failed');

# The guild join lands the member, then the roles follow.
ok(wait_for(sub { $q->(q{SELECT count(*) FROM lhdiscord.outbox WHERE state <> 'done'}) eq '0' }, 30),
	'join and roles done');
my @reqs = grep { $_->{path} =~ m{/guilds/} } @{ mock_requests(0) };
my @kinds = map { "$_->{method} " . ($_->{path} =~ m{/roles/} ? 'role' : 'member') } @reqs;
is($kinds[0], 'PUT member', 'first the guild join (PUT member)');
is($reqs[0]{status}, 201, 'the join answered 201 Created');
is($reqs[0]{body}{access_token}, '<redacted>', 'the join carries the access token');
is(scalar(grep { $_->{status} == 404 } @reqs), 0, 'roles waited for the join: no 10007');
is_deeply(mock_get('/_mock/members/' . GUILD_ID . "/$ALICE")->{roles},
	[ '900000000000000101', '900000000000000104' ], 'roles applied after the join');

# Token refresh: within the margin, the worker refreshes.
$q->(q{UPDATE lhdiscord.discord_accounts SET token_expires_at = now() + interval '1 hour'});
$node->safe_psql('postgres', q{ALTER SYSTEM SET lhdiscord.poll_interval = 1});
$node->reload;
ok(wait_for(sub { $q->(q{SELECT tokens_refreshed_at IS NOT NULL FROM lhdiscord.discord_accounts}) eq 't' }, 30),
	'tokens refreshed');
my ($access2, $refresh2) = split /\|/, $q->(
	q{SELECT t.access_token, t.refresh_token FROM lhdiscord.discord_accounts a, lhdiscord.account_tokens(a.id) t});
isnt($access2, $access, 'a new access token');
push @secrets, $access2, $refresh2;
cmp_ok($q->(q{SELECT extract(epoch FROM token_expires_at - now())::int FROM lhdiscord.discord_accounts}), '>', 600000,
	'expiry extended');

# A refresh refused for the client (a wrong client secret: 401
# invalid_client) is not the account's fault: its tokens are not marked stale.
$node->append_conf('postgresql.conf', "lhdiscord.client_secret = 'a-wrong-client-secret'");
$node->reload;
$q->(q{UPDATE lhdiscord.discord_accounts SET token_expires_at = now() + interval '1 hour'});
ok(wait_for(sub { $q->(q{SELECT count(*) FROM lhdiscord.outbox WHERE kind = 'token_refresh' AND state = 'failed' AND last_status = 401}) eq '1' }, 30),
	'a refresh with a wrong client secret fails (401)');
is($q->(q{SELECT tokens_stale FROM lhdiscord.discord_accounts}), 'f', 'the tokens are not marked stale for it');
sleep 2;
is($q->(q{SELECT count(*) FROM lhdiscord.outbox WHERE kind = 'token_refresh' AND state IN ('pending', 'in_flight')}), '0',
	'and no refresh storm: the next try waits an hour');
$node->append_conf('postgresql.conf', "lhdiscord.client_secret = '$SECRET'");
$node->reload;
$q->(q{DELETE FROM lhdiscord.outbox WHERE kind = 'token_refresh' AND state = 'failed'});

# A refresh that fails for good (invalid_grant) marks the tokens stale; the
# account stays.
mock_post('/_mock/oauth/expire', { all => JSON::PP::true });
$q->(q{UPDATE lhdiscord.discord_accounts SET token_expires_at = now() + interval '1 hour'});
ok(wait_for(sub { $q->(q{SELECT tokens_stale FROM lhdiscord.discord_accounts}) eq 't' }, 30), 'tokens stale');
is($q->(q{SELECT status FROM lhdiscord.discord_accounts}), 'active', 'account still linked and active');
is($q->(q{SELECT tokens_stale FROM lhdiscord.account_overview}), 't', 'account_overview shows it');

# No secret anywhere.
my $log = slurp_file($node->logfile);
my $audit = $q->(q{SELECT string_agg(coalesce(before_json::text, '') || coalesce(after_json::text, '') || coalesce(description, ''), ' ') FROM lhdiscord.audit_log});
my $outbox = $q->(q{SELECT string_agg(payload::text || coalesce(last_error, ''), ' ') FROM lhdiscord.outbox});
my $mocklog = slurp_file($LhdTest::MOCK_LOG);
for my $s (grep { defined && length } @secrets)
{
	my $short = substr($s, 0, 6) . '...';
	unlike($log, qr/\Q$s\E/, "secret $short not in the server log");
	unlike($audit, qr/\Q$s\E/, "secret $short not in the audit log");
	unlike($outbox, qr/\Q$s\E/, "secret $short not in the outbox");
	unlike($mocklog, qr/\Q$s\E/, "secret $short not in the mock's log");
}

$node->stop;
done_testing();
