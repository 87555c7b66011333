# The PHP portal client (examples/php) against the real worker and the mock
# Discord: it connects as a login role holding only lhdiscord_app (and its
# own public.users), installs the SECURITY INVOKER sync trigger, links by
# OAuth2 (begin, the browser at the mock's authorize page, the callback),
# imports an account, promotes, brigs and releases, sends DMs, unlinks,
# revokes and deletes, reads status_map and acts on status and
# session_revoked_at. Every SQLSTATE the app-facing functions document is
# raised through the library and arrives as its exception class with the
# SQLSTATE and message, with nothing changed in the database and nothing
# sent to Discord; governance, monitor and superuser calls are refused with
# 42501. No secret reaches the server log, and the portal's values travel
# as bind parameters.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use IPC::Run;
use JSON::PP;
use LhdTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $PHP_DIR = "$FindBin::RealBin/../../examples/php";
my $PORTAL  = "$PHP_DIR/bin/portal.php";
my $SECRET  = 'mock-client-secret-php-R5k2';
my $REDIRECT = 'https://portal.example/auth/discord/callback';
my $PORTAL_PW = 'portal-pw-' . join('', map { sprintf '%02x', int(rand(256)) } 1 .. 12);
my %ROLE = (
	traveler => '940000000000000101', resident => '940000000000000102',
	citizen => '940000000000000103', verified => '940000000000000104',
	staff_engineer => '940000000000000113', rank_officer => '940000000000000123',
	'hauling.member' => '940000000000000131');
my ($ALICE_D, $BOB_D, $CAROL_D) = ('950000000000000001', '950000000000000002', '950000000000000003');
my @secrets = ([ 'the client secret', $SECRET ], [ 'the portal\'s password', $PORTAL_PW ]);

# No PHP is a failure, not a skip: test/run installs php-cli and php-pgsql.
my $php_modules = `php -m 2>&1`;
ok($? == 0, 'php (php-cli) is installed') or BAIL_OUT('php is missing: install php-cli (test/lib.sh LHD_SUITE_PACKAGES)');
like($php_modules, qr/^pdo_pgsql$/m, 'PDO with pdo_pgsql (php-pgsql) is installed')
  or BAIL_OUT('pdo_pgsql is missing: install php-pgsql');
ok(-f $PORTAL, 'the PHP client is in the work directory')
  or BAIL_OUT("$PORTAL not found: test/lib.sh lhd_make_workdir must copy examples/ into the work directory");

start_mock(client_secret => $SECRET);
setup_guild();
mock_post('/_mock/users', { id => $ALICE_D, username => 'alice.d', global_name => 'Alice', avatar => 'a1b2c3' });
mock_post('/_mock/users', { id => $BOB_D, username => 'bob.d' });
mock_post('/_mock/users', { id => $CAROL_D, username => 'carol.d' });

my $node = new_node('php_client', conf => {
	'lhdiscord.client_id' => "'123456789012345678'",
	'lhdiscord.client_secret' => "'$SECRET'",
	'lhdiscord.redirect_uri' => "'$REDIRECT'",
	'lhdiscord.reconcile_interval' => 0,
	# log_statement = all (the test cluster's default) with the README's
	# advice: no parameter values in the log.
	log_parameter_max_length => 0 });
my $q = sub { $node->safe_psql('postgres', $_[0]) };
my $gov = sub {
	$node->safe_psql('postgres', $_[0], connstr => $node->connstr('postgres') . ' user=governance');
};
$q->(join "\n", map { "SELECT lhdiscord.map_role('$_', '$ROLE{$_}');" } sort keys %ROLE);

# The roles README's "Connecting the application" creates; the portal also
# creates (and so owns) its own table in public. The password is set in a
# session that does not log statements.
$q->(qq{
	SET log_statement = 'none';
	CREATE ROLE portal LOGIN PASSWORD '$PORTAL_PW';
	RESET log_statement;
	GRANT lhdiscord_app TO portal;
	GRANT CREATE ON SCHEMA public TO portal;
	CREATE ROLE governance LOGIN;
	GRANT lhdiscord_governance TO governance;
});
# The portal logs in with its password over the node's Unix socket.
my $hba = $node->data_dir . '/pg_hba.conf';
my $hba_text = slurp_file($hba);
open(my $fh, '>', $hba) or die "pg_hba.conf: $!";
print $fh "local all portal scram-sha-256\n", $hba_text;
close $fh;
$node->reload;
is($q->(q{SELECT string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_auth_members m
	JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = 'portal'}),
	'lhdiscord_app', 'portal is a member of lhdiscord_app and nothing else');
is($q->(q{SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls FROM pg_roles WHERE rolname = 'portal'}),
	'f', 'portal has no role attributes');

$ENV{LHD_PDO_DSN} = 'pgsql:host=' . $node->host . ';port=' . $node->port . ';dbname=postgres;application_name=portal-php';
$ENV{LHD_PDO_USER} = 'portal';
$ENV{LHD_PDO_PASSWORD} = $PORTAL_PW;
$ENV{LHD_REDIRECT_URI} = $REDIRECT;

# Run one portal command; its JSON answer (stdout is never printed: a
# callback URL carries an OAuth code).
sub php
{
	my ($stdin, @args) = @_;
	my ($out, $err) = ('', '');
	my $ran = eval {
		IPC::Run::run([ 'php', $PORTAL, @args ], '<', \($stdin // ''), '>', \$out, '2>', \$err,
			IPC::Run::timeout(60));
		1;
	};
	my $res = eval { JSON::PP->new->decode($out) };
	if (!$ran || ref($res) ne 'HASH')
	{
		diag("php $args[0] failed (exit $?): " . ($@ || $err));
		return { ok => JSON::PP::false, error => { class => '(no answer)', sqlstate => '' } };
	}
	return $res;
}

# A JSON value as psql prints it: t/f for booleans, '' for null.
sub flat
{
	my ($v) = @_;
	return !defined $v ? '' : JSON::PP::is_bool($v) ? ($v ? 't' : 'f') : $v;
}

sub ok_php
{
	my ($res, $what) = @_;
	ok($res->{ok}, $what) or diag(explain($res->{error}));
	return $res;
}

my $GUILD = GUILD_ID;
sub roles_of { my $m = mock_get("/_mock/members/$GUILD/$_[0]"); return $m->{roles} ? join(',', sort @{ $m->{roles} }) : undef; }
sub role_set { return join(',', sort @ROLE{@_}); }
sub idle
{
	return wait_for(sub { q_is($node, q{SELECT count(*) FROM lhdiscord.outbox WHERE state IN ('pending', 'in_flight')}, '0') },
		30, 'the outbox to drain');
}
sub audit_count
{
	my ($action, $subject) = @_;
	return $q->("SELECT count(*) FROM lhdiscord.audit_log WHERE action = '$action' AND subject_user_id = $subject");
}
sub last_seq { return mock_get('/_mock/requests?since=0&limit=1')->{last_seq}; }
sub lane_of_last_roles_job
{
	return $q->("SELECT lane FROM lhdiscord.outbox WHERE kind = 'roles' AND discord_user_id = '$_[0]' ORDER BY id DESC LIMIT 1");
}

# Everything lhdiscord and the portal keep, per table: rows and a digest.
sub fingerprint
{
	return $q->(q{
		SELECT string_agg(t || '=' || n || ':' || h, ' ' ORDER BY t) FROM (
		  SELECT 'public.users' t, count(*) n, md5(coalesce(string_agg(x::text, '|' ORDER BY x.id), '')) h FROM public.users x
		  UNION ALL SELECT 'users', count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x.user_id), '')) FROM lhdiscord.users x
		  UNION ALL SELECT 'user_roles', count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM lhdiscord.user_roles x
		  UNION ALL SELECT 'discord_accounts', count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x.id), '')) FROM lhdiscord.discord_accounts x
		  UNION ALL SELECT 'oauth_states', count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM lhdiscord.oauth_states x
		  UNION ALL SELECT 'outbox', count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x.id), '')) FROM lhdiscord.outbox x
		  UNION ALL SELECT 'audit_log', count(*), coalesce(max(x.id)::text, '-') FROM lhdiscord.audit_log x
		  UNION ALL SELECT 'break_glass', count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM lhdiscord.break_glass x
		  UNION ALL SELECT 'role_map', count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x.key), '')) FROM lhdiscord.role_map x
		  UNION ALL SELECT 'member_snapshots', count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x.id), '')) FROM lhdiscord.member_snapshots x
		) s});
}

# ---- connecting ------------------------------------------------------------

{
	local $ENV{LHD_PDO_PASSWORD} = 'not-the-password';
	my $res = php(undef, 'identity', '1');
	is($res->{error}{class} . ' ' . $res->{error}{sqlstate}, 'Lhdiscord\DatabaseError 08006',
		'a wrong password is refused: the portal logs in with scram-sha-256');
}

# ---- the migration: the app's table, then the sync trigger ------------------

ok_php(php(undef, 'migrate', 'users_table'), 'migration 1: the Laravel users table, as portal');
# A user who registered before lhdiscord came along.
$q->(q{INSERT INTO public.users (name, email, password, created_at, updated_at)
	VALUES ('zed', 'zed@example.org', 'x', now(), now())});
ok_php(php(undef, 'migrate', 'portal_sync'), 'migration 2: portal_sync.sql, as portal');
is($q->(q{SELECT tableowner FROM pg_tables WHERE schemaname = 'public' AND tablename = 'users'}), 'portal',
	'public.users belongs to the portal');
is($q->(q{SELECT p.prosecdef || ' ' || r.rolname || ' ' || array_to_string(p.proconfig, ',')
	FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner WHERE p.oid = 'public.lhdiscord_sync_user()'::regprocedure}),
	'false portal search_path=pg_catalog, pg_temp', 'the sync function: SECURITY INVOKER, the portal\'s, search_path pinned');
is($q->(q{SELECT has_function_privilege('public', 'public.lhdiscord_sync_user()', 'EXECUTE')}), 'f',
	'PUBLIC may not call it');
is($q->(q{SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger WHERE tgrelid = 'public.users'::regclass AND NOT tgisinternal}),
	'lhdiscord_refuse_truncate,lhdiscord_sync_delete,lhdiscord_sync_insert,lhdiscord_sync_update',
	'insert, update, delete and truncate triggers on public.users');
my $zed = $q->(q{SELECT id FROM public.users WHERE name = 'zed'});
is($q->("SELECT username || ' ' || membership_level || ' ' || status FROM lhdiscord.users WHERE user_id = $zed"),
	'zed drifter active', 'the backfill copied the existing user');
my $fp = fingerprint();
ok_php(php(undef, 'migrate', 'portal_sync'), 'portal_sync.sql again');
is(fingerprint(), $fp, 'running it again changes nothing');
my $log_after_migration = -s $node->logfile;

# ---- registration: public.users -> lhdiscord.users ---------------------------

my %id;
for my $u ([ 'alice', 'traveler', 'notify' ], [ 'bob', 'traveler', 'notify' ], [ 'carol', 'traveler', 'notify' ],
	[ 'dave', 'drifter', '' ], [ 'erin', 'traveler', '' ])
{
	my ($name, $level, $notify) = @$u;
	my $res = ok_php(php(undef, 'register', $name, "$name\@example.org", $level, $notify), "register $name");
	$id{$name} = $res->{id};
	is(join(' ', map { flat($res->{lhdiscord}{$_}) } qw(user_id username membership_level notify_discord in_brig status)),
		join(' ', $res->{id}, $name, $level, ($notify ? 't' : 'f'), 'f', 'active'),
		"$name is in lhdiscord.users, as the trigger wrote it");
}
is($q->(q{SELECT string_agg(u.user_id || ':' || u.username || ':' || u.membership_level, ',' ORDER BY u.user_id)
	FROM lhdiscord.users u JOIN public.users p ON p.id = u.user_id AND p.name = u.username
	  AND p.membership_level = u.membership_level::text AND p.notify_discord = u.notify_discord}),
	join(',', map { "$_->[0]:$_->[1]:$_->[2]" } ([ $zed, 'zed', 'drifter' ],
		map { [ $id{$_}, $_, $_ eq 'dave' ? 'drifter' : 'traveler' ] } qw(alice bob carol dave erin))),
	'both tables agree on every user');
ok_php(php(undef, 'grant-role', $id{erin}, 'admin'), 'erin is a portal admin');
$fp = fingerprint();
my $res = ok_php(php(undef, 'touch', $id{alice}), 'a write lhdiscord does not sync (updated_at)');
is(fingerprint() =~ s/public\.users=\S+ //r, $fp =~ s/public\.users=\S+ //r,
	'it leaves lhdiscord alone: no write, no job, no audit row');

# ---- linking by OAuth2 ------------------------------------------------------

is(flat(php(undef, 'can-link', $id{alice})->{can_link}), 't', 'can_link: alice (traveler) may link');
is(flat(php(undef, 'can-link', $id{dave})->{can_link}), 'f', 'can_link: dave (drifter) may not');

mock_post('/_mock/oauth/next_user', { user_id => $ALICE_D });
$res = ok_php(php(undef, 'link', $id{alice}), 'alice links her Discord account by OAuth2');
like($res->{authorize_url},
	qr{^http://127\.0\.0\.1:\d+/oauth2/authorize\?response_type=code&client_id=123456789012345678&redirect_uri=https%3A%2F%2Fportal\.example%2Fauth%2Fdiscord%2Fcallback&scope=identify%20guilds\.join&state=[0-9a-f]{64}$},
	'begin_oauth gave the authorization URL (the mock\'s host, both scopes, a state)');
is($res->{callback_to}, $REDIRECT, 'the mock redirected the browser to the portal\'s callback');
my $acct = $res->{account};
is(join(' ', map { $acct->{$_} // 'null' } qw(user_id discord_user_id username global_name status display_name)),
	"$id{alice} $ALICE_D alice.d Alice active Alice", 'complete_oauth linked the account');
is($acct->{avatar_url}, "https://cdn.discordapp.com/avatars/$ALICE_D/a1b2c3.png", 'avatar_url() of the row');
ok(!grep({ /token/ } keys %$acct), 'no token column reaches PHP');
my %acct = (alice => $acct->{id});
is($q->("SELECT used_at IS NOT NULL FROM lhdiscord.oauth_states WHERE user_id = $id{alice}"), 't', 'the state was consumed');
is($q->("SELECT access_token IS NOT NULL AND refresh_token IS NOT NULL FROM lhdiscord.discord_accounts WHERE id = $acct{alice}"),
	't', 'tokens stored (encrypted)');
my ($access, $refresh) = split /\|/, $q->("SELECT t.access_token || '|' || t.refresh_token FROM lhdiscord.account_tokens($acct{alice}) t");
push @secrets, [ 'alice\'s access token', $access ], [ 'alice\'s refresh token', $refresh ];
ok(idle(), 'the worker joined alice to the guild and converged her roles');
my @join = grep { $_->{path} =~ m{/guilds/\d+/members/$ALICE_D$} && $_->{method} eq 'PUT' } @{ mock_requests(0) };
is(scalar(@join) . ' ' . ($join[0]{status} // ''), '1 201', 'one guild join (PUT member, 201)');
is(roles_of($ALICE_D), role_set(qw(traveler verified)), 'on Discord: traveler and verified');
is(audit_count('discord_account_linked', $id{alice}), '1', 'audited discord_account_linked');
is($q->("SELECT db_session_user || ' ' || db_current_user || ' ' || actor_user_id FROM lhdiscord.audit_log
	WHERE action = 'discord_account_linked' AND subject_user_id = $id{alice}"),
	"portal portal $id{alice}", 'by the portal\'s role, for alice');

# Bob: the same flow, one request at a time, as the controllers see it.
mock_post('/_mock/oauth/next_user', { user_id => $BOB_D });
my $url = php(undef, 'link-begin', $id{bob})->{authorize_url};
like($url, qr{state=[0-9a-f]{64}$}, 'the "Link Discord" controller got the authorization URL');
my $bob_callback = php(undef, 'browser', $url)->{callback_url};
like($bob_callback, qr{^\Q$REDIRECT\E\?code=[^&]+&state=[0-9a-f]{64}$}, 'the browser came back with a code and the state');
push @secrets, [ 'bob\'s OAuth code', $bob_callback =~ /code=([^&]+)/ ], [ 'bob\'s OAuth state', $bob_callback =~ /state=([0-9a-f]+)/ ];
$res = ok_php(php($bob_callback, 'link-callback', $id{bob}), 'the callback controller completed the link');
is($res->{account}{discord_user_id}, $BOB_D, 'bob\'s account');
$acct{bob} = $res->{account}{id};
ok(idle(), 'bob joined');
is(roles_of($BOB_D), role_set(qw(traveler verified)), 'bob on Discord: traveler and verified');
my $ov = php(undef, 'overview')->{rows} // [];
is(join("\n", map { my $r = $_; join('|', map { flat($r->{$_}) } qw(id user_id portal_username discord_user_id display_name status has_access_token pending_jobs)) } @$ov),
	$q->(q{SELECT id, user_id, portal_username, discord_user_id, display_name, status, has_access_token, pending_jobs
	  FROM lhdiscord.account_overview ORDER BY id}),
	'the admin page (account_overview) reads as the database has it');
is(join(',', map { "$_->{portal_username}:$_->{display_name}:" . flat($_->{has_access_token}) } @$ov),
	'alice:Alice:t,bob:bob.d:t', 'two accounts, with display names and tokens held');
is(flat(php(undef, 'accounts', $id{bob}, $id{bob})->{linked}), 't', 'has_discord_linked: bob');
is(scalar(@{ php(undef, 'accounts', $id{erin}, $id{alice})->{accounts} // [] }), 1, 'an admin sees alice\'s account');
is(php(undef, 'sync', $id{alice})->{queued}, 1, 'sync_permissions re-queues alice\'s one account');
ok(idle(), 'the re-sync converged');
is(roles_of($ALICE_D), role_set(qw(traveler verified)), 'and changed nothing on Discord');

# ---- promotion, staff -------------------------------------------------------

$res = ok_php(php(undef, 'promote', $id{alice}, 'resident'), 'promote alice to resident (public.users)');
is($res->{app}{membership_level} . ' ' . $res->{lhdiscord}{membership_level}, 'resident resident',
	'the trigger carried the level over');
is(lane_of_last_roles_job($ALICE_D), 'interactive', 'the promotion is interactive work');
ok(idle(), 'converged');
is(roles_of($ALICE_D), role_set(qw(resident verified)), 'on Discord: resident replaced traveler');
is($q->("SELECT before_json->>'membership_level' || ' -> ' || (after_json->>'membership_level') FROM lhdiscord.audit_log
	WHERE action = 'discord_roles_synced' AND subject_user_id = $id{alice} ORDER BY id DESC LIMIT 1"),
	'traveler -> resident', 'audited discord_roles_synced, traveler -> resident');
ok_php(php(undef, 'staff', $id{alice}, 'engineer', 'officer'), 'alice joins engineering as an officer');
ok(idle(), 'converged');
is(roles_of($ALICE_D), role_set(qw(resident verified staff_engineer rank_officer)), 'on Discord: department and rank roles too');
is(audit_count('discord_staff_synced', $id{alice}), '1', 'audited discord_staff_synced');

# ---- DMs --------------------------------------------------------------------

my $dm = "Welcome aboard, alice: you are a resident now.";
is(php($dm, 'notify', $id{alice}, 'UserPromotedToResidentNotification')->{queued}, 1, 'notify alice: one DM queued');
my $announcement = "Maintenance tonight from 22:00: the portal will be read-only.";
is(php($announcement, 'notify', $id{bob}, 'NewTicketNotification', 'bulk')->{queued}, 1, 'an announcement to bob in the bulk lane');
is($q->("SELECT lane FROM lhdiscord.outbox WHERE kind = 'dm' AND discord_user_id = '$BOB_D'"), 'bulk', 'queued as bulk work');
is(php('digest', 'notify', $id{alice}, 'TicketDigestNotification')->{queued}, 0, 'TicketDigestNotification sends no DM');
is(php('hello', 'notify', $id{dave}, 'NewTicketNotification')->{queued}, 0, 'no DM for a user without an account');
ok(wait_for(sub { scalar(@{ mock_get('/_mock/messages') }) >= 2 }, 30, 'two DMs'), 'the DMs reached Discord');
ok(idle(), 'nothing left to send');
my @msgs = @{ mock_get('/_mock/messages') };
is(scalar(@msgs), 2, 'two messages in all');
my %got = map { $_->{recipient_id} => $_->{content} } @msgs;
is_deeply(\%got, { $ALICE_D => $dm, $BOB_D => $announcement }, 'each DM, once, to the right account, word for word');

ok(idle(), 'idle');
$fp = fingerprint();
$res = ok_php(php(undef, 'notify-then-fail', $id{alice}, 'NewTicketReplyNotification'), 'a DM inside a transaction that fails');
is($res->{queued_in_transaction} . ' ' . $res->{rolled_back}, '1 the ticket reply could not be saved',
	'it was queued, then the transaction rolled back');
is(fingerprint(), $fp, 'the rollback took the DM with it: nothing queued');
$res = ok_php(php(undef, 'dm-preference', $id{bob}, 'off'), 'bob turns Discord DMs off');
is(flat($res->{lhdiscord}{notify_discord}), 'f', 'the trigger carried it over');
is(php('hello', 'notify', $id{bob}, 'NewTicketNotification')->{queued}, 0, 'no DM for bob now');
ok_php(php(undef, 'dm-preference', $id{bob}, 'on'), 'bob turns them on again');

# ---- the brig ---------------------------------------------------------------

$res = ok_php(php(undef, 'brig', $id{alice}), 'alice goes to the brig (public.users.in_brig)');
is(flat($res->{lhdiscord}{in_brig}), 't', 'the trigger carried it over');
is(php(undef, 'accounts', $id{alice}, $id{alice})->{accounts}[0]{status}, 'brigged', 'her account is brigged at once');
is(lane_of_last_roles_job($ALICE_D), 'urgent', 'the strip is urgent work');
is(php('hello', 'notify', $id{alice}, 'NewTicketNotification')->{queued}, 0, 'no DM to a brigged account');
is(php(undef, 'sync', $id{alice})->{queued}, 0, 'sync_permissions skips a brigged account');
ok(idle(), 'converged');
is(roles_of($ALICE_D), '', 'on Discord: every managed role stripped');
is(audit_count('discord_user_brigged', $id{alice}), '1', 'audited discord_user_brigged');
ok_php(php(undef, 'release', $id{alice}), 'alice is released');
is(php(undef, 'accounts', $id{alice}, $id{alice})->{accounts}[0]{status}, 'active', 'her account is active again');
ok(idle(), 'converged');
is(roles_of($ALICE_D), role_set(qw(resident verified staff_engineer rank_officer)), 'on Discord: her roles are back');
is(audit_count('discord_user_released', $id{alice}), '1', 'audited discord_user_released');

# ---- every documented error, from PHP -----------------------------------------

my %seen;
# Run a failing command; assert the class, SQLSTATE and message, that nothing
# the portal can see changed (PHP's own check), that nothing changed in the
# database (the superuser's fingerprint) and that nothing went to Discord.
sub refused
{
	my ($what, $want_class, $want_state, $want_msg, $stdin, @args) = @_;
	ok(idle(), "$what: the worker is idle first");
	my $before = fingerprint();
	my $seq = last_seq();
	my $res = php($stdin, '--check-unchanged', @args);
	my $e = $res->{error} // {};
	is(($res->{ok} ? 'succeeded' : $e->{class}) . ' ' . ($e->{sqlstate} // ''), "Lhdiscord\\$want_class $want_state",
		"$what: $want_class ($want_state)");
	ref($want_msg) ? like($e->{message}, $want_msg, "$what: the message") : is($e->{message}, $want_msg, "$what: the message");
	ok($res->{visible_unchanged}, "$what: nothing the portal sees changed");
	is(fingerprint(), $before, "$what: nothing changed in the database");
	my @sent = grep { $_->{path} !~ m{/oauth2/token$|/users/\@me$} } @{ mock_requests($seq) };
	is(scalar(@sent), 0, "$what: nothing sent to Discord");
	$seen{$e->{sqlstate} // ''}++;
	return $e;
}
# The browser's part of an OAuth2 attempt: begin as $user, authorize as
# $discord_id; the callback URL.
sub authorized
{
	my ($user, $discord_id) = @_;
	mock_post('/_mock/oauth/next_user', { user_id => $discord_id });
	my $cb = php(undef, 'browser', php(undef, 'link-begin', $user)->{authorize_url})->{callback_url} // '';
	my $n = @secrets;
	push @secrets, [ "OAuth code $n", $cb =~ /code=([^&]+)/ ], [ "OAuth state $n", $cb =~ /state=([0-9a-f]+)/ ];
	return $cb;
}

my $e;
refused('begin OAuth2 as a drifter', 'NotEligible', '42501', 'You are not eligible to link a Discord account.',
	undef, 'link-begin', $id{dave});
ok_php(php(undef, 'brig', $id{carol}), 'carol goes to the brig');
refused('import an account while in the brig', 'NotEligible', '42501', 'You are not eligible to link a Discord account.',
	undef, 'link-import', $id{carol}, $CAROL_D, 'carol.d');
ok_php(php(undef, 'release', $id{carol}), 'carol is released');
refused('unlink someone else\'s account', 'Unauthorized', '42501', 'This action is unauthorized.',
	undef, 'unlink', $id{bob}, $acct{alice});
refused('revoke an account without being an admin', 'Unauthorized', '42501', 'This action is unauthorized.',
	undef, 'revoke', $id{bob}, $acct{alice});
refused('list someone else\'s accounts', 'Unauthorized', '42501', 'This action is unauthorized.',
	undef, 'accounts', $id{bob}, $id{alice});
refused('begin OAuth2 with an account linked already', 'AccountLimitReached', '23514', 'Maximum Discord accounts reached.',
	undef, 'link-begin', $id{alice});
refused('import a second account', 'AccountLimitReached', '23514', 'Maximum Discord accounts reached.',
	undef, 'link-import', $id{alice}, '950000000000000009', 'alice.alt');
my $cb = authorized($id{carol}, $ALICE_D);
refused('OAuth2 with a Discord account someone else linked', 'AlreadyLinked', '23505',
	'This Discord account is already linked to another user.', $cb, 'link-callback', $id{carol});
refused('import a Discord account someone else linked', 'AlreadyLinked', '23505',
	'This Discord account is already linked to another user.', undef, 'link-import', $id{carol}, $ALICE_D, 'alice.d');
refused('begin OAuth2 for an unknown user', 'UserNotFound', 'P0002', 'user 999999 does not exist',
	undef, 'link-begin', '999999');
refused('unlink an unknown account', 'AccountNotFound', 'P0002', 'Discord account 999999 does not exist',
	undef, 'unlink', $id{alice}, '999999');
refused('import a malformed Discord id', 'InvalidSnowflake', '22P02', 'invalid Discord user id: "12345"',
	undef, 'link-import', $id{carol}, '12345', 'carol.d');
refused('import a Discord id with a leading zero', 'InvalidSnowflake', '22P02', "invalid Discord user id: \"0$CAROL_D\"",
	undef, 'link-import', $id{carol}, "0$CAROL_D", 'carol.d');
refused('import a Discord id above 2^64 - 1', 'InvalidSnowflake', '22P02', 'invalid Discord user id: "18446744073709551616"',
	undef, 'link-import', $id{carol}, '18446744073709551616', 'carol.d');
refused('promote to a level that does not exist', 'InvalidValue', '22P02',
	'invalid input value for enum lhdiscord.membership_level: "captain"', undef, 'promote', $id{carol}, 'captain');
refused('a DM in a lane that does not exist', 'InvalidValue', '22P02',
	'invalid input value for enum lhdiscord.outbox_lane: "fast"', 'hello', 'notify', $id{alice}, 'NewTicketNotification', 'fast');
refused('list accounts as a guest', 'MissingArgument', '22004', 'actor_id must not be null',
	undef, 'accounts', '-', $id{alice});
refused('unlink as a guest', 'MissingArgument', '22004', 'actor_id must not be null',
	undef, 'unlink', '-', $acct{alice});
refused('import a 33-character Discord username', 'ValueTooLong', '22001', 'Discord username is too long',
	undef, 'link-import', $id{carol}, $CAROL_D, 'c' x 33);
refused('a DM of 40,001 characters', 'ValueTooLong', '22001', 'notification content is too long',
	'y' x 40001, 'notify', $id{alice}, 'NewTicketNotification');
refused('a notification lhdiscord does not know', 'UnknownNotification', '22023', 'unknown notification: PizzaNotification',
	'hello', 'notify', $id{alice}, 'PizzaNotification');
refused('a DM in the urgent lane', 'InvalidLane', '22023', 'lane urgent is reserved for removals that take access away',
	'hello', 'notify', $id{alice}, 'NewTicketNotification', 'urgent');
refused('an import in the urgent lane', 'InvalidLane', '22023', 'lane urgent is reserved for removals that take access away',
	undef, 'link-import', $id{carol}, $CAROL_D, 'carol.d', 'urgent');

# OAuth2 failures: one message, a DETAIL saying which, nothing written.
$e = refused('a callback with a state nobody issued', 'AuthorizationFailed', '28000', 'Discord authorization failed.',
	"$REDIRECT?code=forged-code&state=" . ('0' x 64), 'link-callback', $id{carol});
is($e->{detail}, 'The state is unknown.', '... the detail says why');
$cb = authorized($id{carol}, $CAROL_D);
my ($carol_state) = $cb =~ /state=([0-9a-f]+)/;
$e = refused('the user pressed Cancel at Discord', 'AuthorizationFailed', '28000', 'Discord authorization failed.',
	"$REDIRECT?error=access_denied&state=$carol_state", 'link-callback', $id{carol});
is($e->{detail}, 'The authorization code or state is missing.', '... the detail says why');
$e = refused('a callback replayed for another user', 'AuthorizationFailed', '28000', 'Discord authorization failed.',
	$cb, 'link-callback', $id{erin});
is($e->{detail}, 'The state was issued to another user.', '... the detail says why');
$e = refused('a code Discord refuses', 'AuthorizationFailed', '28000', 'Discord authorization failed.',
	"$REDIRECT?code=not-a-code&state=$carol_state", 'link-callback', $id{carol});
like($e->{detail}, qr/invalid_grant/, '... the detail says why');
$e = refused('bob\'s callback replayed', 'AuthorizationFailed', '28000', 'Discord authorization failed.',
	$bob_callback, 'link-callback', $id{bob});
is($e->{detail}, 'The state was already used.', '... the detail says why');

# No encryption key: tokens cannot be stored.
my $tokens = '{"access_token": "import-access-7Hq2", "refresh_token": "import-refresh-9Zp4", "expires_in": 604800}';
push @secrets, [ 'the imported access token', 'import-access-7Hq2' ], [ 'the imported refresh token', 'import-refresh-9Zp4' ];
$node->append_conf('postgresql.conf', "lhdiscord.encryption_key = ''");
$node->reload;
ok(wait_for(sub { q_is($node, 'SHOW lhdiscord.encryption_key', '') }, 30, 'the key to go'), 'the encryption key is unset');
refused('import with tokens and no encryption key', 'EncryptionKeyMissing', '55000',
	'cannot store OAuth tokens: lhdiscord.encryption_key is not set', $tokens, 'link-import', $id{carol}, $CAROL_D, 'carol.d', 'bulk');
$node->append_conf('postgresql.conf', "lhdiscord.encryption_key = '" . TEST_KEY . "'");
$node->reload;
ok(wait_for(sub { q_is($node, 'SHOW lhdiscord.encryption_key', '********') }, 30, 'the key to return'), 'the key is back');

# The same import now succeeds: the refusal was the key's.
mock_post('/_mock/members', { guild_id => GUILD_ID, id => $CAROL_D, roles => [] });
$res = ok_php(php($tokens, 'link-import', $id{carol}, $CAROL_D, 'carol.d', 'bulk'), 'with the key, the import succeeds');
$acct{carol} = $res->{account}{id};
is(lane_of_last_roles_job($CAROL_D), 'bulk', 'an import converges in the bulk lane');
ok(idle(), 'converged');
is(roles_of($CAROL_D), role_set(qw(traveler verified)), 'carol on Discord: traveler and verified');

# What the portal's role may not do at all.
ok(idle(), 'idle before the probes');
$fp = fingerprint();
$res = php(undef, '--check-unchanged', 'probe-refusals');
my @probes = @{ $res->{results} // [] };
cmp_ok(scalar(@probes), '>=', 20, 'probed governance, monitor and superuser calls');
for my $p (@probes)
{
	is(($p->{ok} ? 'allowed' : "$p->{class} $p->{sqlstate}"), 'Lhdiscord\DatabasePermissionDenied 42501',
		"portal may not: $p->{what}");
	$seen{ $p->{sqlstate} // '' }++;
}
like(join("\n", map { $_->{message} // '' } @probes), qr/^permission denied for function reconcile$/m,
	'reconcile: permission denied for function reconcile');
ok($res->{visible_unchanged}, 'the probes changed nothing the portal sees');
is(fingerprint(), $fp, 'the probes changed nothing in the database');

# Every SQLSTATE README documents for the app-facing functions was seen.
is(join(' ', sort grep { length } keys %seen), join(' ', sort qw(42501 23514 23505 P0002 22P02 22004 22001 22023 55000 28000)),
	'every documented SQLSTATE arrived in PHP');

# ---- status_map, after a real member scan -------------------------------------

# A moderator gives alice and bob the entitlement role on Discord.
for my $d ($ALICE_D, $BOB_D)
{
	my @roles = split /,/, roles_of($d);
	mock_post('/_mock/members', { guild_id => GUILD_ID, id => $d, roles => [ @roles, $ROLE{'hauling.member'} ] });
}
my $snap = $gov->('SELECT lhdiscord.request_member_scan()');
ok(wait_for(sub { q_is($node, "SELECT complete FROM lhdiscord.member_snapshots WHERE id = $snap", 't') }, 30, 'the scan'),
	'governance: a member scan completed');
ok(wait_for(sub { q_is($node, "SELECT status FROM lhdiscord.users WHERE user_id = $id{dave}", 'suspended') }, 30, 'reconcile'),
	'the reconcile after the scan ran');
my $rows = php(undef, 'status-map')->{rows} // [];
my $cols = 'user_id username identity_status eligible entitled privileged effective_access policy_outcome drift';
is(join("\n", map { my $r = $_; join('|', map { flat($r->{$_}) } split / /, $cols) } @$rows),
	$q->('SELECT ' . join(', ', split / /, $cols) . ' FROM lhdiscord.status_map ORDER BY user_id'),
	'PHP reads status_map as the database has it');
my %sm;
for my $r (@$rows)
{
	$sm{ $r->{username} } = join(' ', map { flat($r->{$_}) } qw(identity_status entitled privileged effective_access drift));
}
is($sm{alice}, 'active t f t none', 'alice: active, entitled by the scan, access, no drift');
is($sm{bob}, 'active t f t none', 'bob: the same');
is($sm{erin}, 'active f t t unlinked', 'erin: privileged (admin), access without the role, unlinked');
is($sm{dave}, 'suspended f f f unlinked', 'dave: suspended by the reconcile, unlinked');
is($sm{carol}, 'suspended f f f none', 'carol: linked without the entitlement role, suspended');
like($rows->[0]{snapshot_age}, qr/^\d\d:\d\d:\d\d/, 'snapshot_age is an interval');

# ---- sessions: acting on status and session_revoked_at ----------------------

my $t0 = php(undef, 'login', $id{alice})->{session_started_at};
is(php(undef, 'session', $id{alice}, $t0)->{reason}, 'ok', 'alice logs in: her session is good');
$res = php(undef, 'session', $id{carol}, $t0);
is(($res->{valid} ? 'valid' : 'invalid') . ' ' . $res->{reason}, 'invalid not_active', 'carol\'s session ends: suspended');
ok(defined $res->{session_revoked_at}, 'and the reconcile revoked her sessions');
$res = ok_php(php(undef, 'in-scope', $id{alice}, 'false'), 'the portal takes alice out of scope (access policy)');
is($res->{lhdiscord}{status}, 'suspended', 'lhdiscord suspended her in the same statement');
ok(defined $res->{lhdiscord}{session_revoked_at}, 'and revoked her sessions');
$res = php(undef, 'session', $id{alice}, $t0);
is(($res->{valid} ? 'valid' : 'invalid') . ' ' . $res->{reason}, 'invalid not_active', 'her session ends');
is(flat(php(undef, 'has-access', $id{alice})->{has_access}), 'f', 'has_access: no');
is(audit_count('entitlement.sessions_revoked', $id{alice}), '1', 'audited entitlement.sessions_revoked');
is($q->("SELECT after_json->>'rule' FROM lhdiscord.audit_log WHERE action = 'entitlement.reconcile' AND subject_user_id = $id{alice}"),
	'not_in_scope_entitled', 'audited entitlement.reconcile with the rule');
ok_php(php(undef, 'in-scope', $id{alice}, 'true'), 'back in scope');
is(php(undef, 'identity', $id{alice})->{lhdiscord}{status}, 'active', 'lhdiscord made her active again');
$res = php(undef, 'session', $id{alice}, $t0);
is(($res->{valid} ? 'valid' : 'invalid') . ' ' . $res->{reason}, 'invalid sessions_revoked',
	'the session from before the revocation stays ended');
my $t1 = php(undef, 'login', $id{alice})->{session_started_at};
is(php(undef, 'session', $id{alice}, $t1)->{reason}, 'ok', 'a new login is good');
is(flat(php(undef, 'has-access', $id{alice})->{has_access}), 't', 'has_access: yes');

# ---- unlink, revoke, delete ---------------------------------------------------

ok_php(php(undef, 'unlink', $id{alice}, $acct{alice}), 'alice unlinks her account');
is(lane_of_last_roles_job($ALICE_D), 'urgent', 'the strip is urgent work');
ok(idle(), 'converged');
is(roles_of($ALICE_D), $ROLE{'hauling.member'}, 'on Discord: every managed role gone, the entitlement role (not managed) kept');
is(scalar(@{ php(undef, 'accounts', $id{alice}, $id{alice})->{accounts} // ['?'] }), 0, 'she has no account');
is(audit_count('discord_account_unlinked', $id{alice}), '1', 'audited discord_account_unlinked');

ok_php(php(undef, 'revoke', $id{erin}, $acct{carol}), 'erin (admin) revokes carol\'s account');
ok(idle(), 'converged');
is(roles_of($CAROL_D), '', 'on Discord: carol\'s managed roles gone');
like($q->("SELECT description FROM lhdiscord.audit_log WHERE action = 'discord_account_revoked' AND subject_user_id = $id{carol}"),
	qr/erin/, 'audited discord_account_revoked on carol, naming erin');

$res = ok_php(php(undef, 'delete', $id{bob}), 'the portal deletes bob');
ok(!defined $res->{lhdiscord}, 'the trigger deleted him from lhdiscord.users');
is($q->("SELECT count(*) FROM lhdiscord.discord_accounts WHERE user_id = $id{bob}"), '0', 'and his account');
ok(idle(), 'converged');
is(roles_of($BOB_D), $ROLE{'hauling.member'}, 'on Discord: his managed roles gone');
my ($ret, $out, $err) = $node->psql('postgres', 'TRUNCATE public.users');
like($err, qr/ERROR:  TRUNCATE public\.users would leave lhdiscord\.users out of step/,
	'TRUNCATE public.users is refused (it would bypass the row triggers), even for a superuser');

# ---- the server log ---------------------------------------------------------

my $log = slurp_file($node->logfile);
for my $s (@secrets)
{
	ok(defined $s->[1] && length $s->[1] >= 6, "$s->[0] was captured");
	unlike($log, qr/\Q$s->[1]\E/, "$s->[0] is not in the server log") if defined $s->[1];
}
like($log, qr/portal-php LOG:  execute \S+: SELECT a\.id, .* FROM lhdiscord\.complete_oauth\(\$1, \$2, \$3\) a/,
	'complete_oauth ran as a prepared statement, the code and state as bind parameters');
cmp_ok(scalar(() = $log =~ /portal-php LOG:  execute /g), '>', 50, 'the portal\'s statements ran prepared');
unlike($log, qr/parameters: \$1/, 'no parameter value is logged (log_parameter_max_length = 0)');
my @simple = grep { /portal-php LOG:  statement: / } split /\n/, substr($log, $log_after_migration);
is(join("\n", grep { !/ LOG:  statement: (DEALLOCATE pdo_stmt_[0-9a-f]+|BEGIN|COMMIT|ROLLBACK)$/ } @simple), '',
	'after the migration, every other statement of the portal was prepared: no SQL text with values');

$node->stop;
done_testing();
