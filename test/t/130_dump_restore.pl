# pg_dump / pg_restore of a database using lhdiscord: every table with user
# data comes back, the append-only audit log included.  The outbox is the
# running instance's work in progress and is not dumped (a restored copy
# must not deliver a DM a second time); every restored account queues its
# own role convergence.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Utils;
use Test::More;

# No worker drains here: it serves another database.
my $node = new_node('dump', no_extension => 1, conf => { 'lhdiscord.database' => "'nothing_here'" });
$node->safe_psql('postgres', 'CREATE DATABASE src');
my $q = sub { $node->safe_psql('src', $_[0]) };
$q->(q{
	CREATE EXTENSION lhdiscord;
	SELECT lhdiscord.map_role('traveler', '900000000000000101');
	INSERT INTO lhdiscord.users (user_id, username, membership_level, notify_discord)
	  SELECT g, 'u' || g, 'traveler', true FROM generate_series(1, 5) g;
	INSERT INTO lhdiscord.user_roles VALUES (1, 'admin');
	SELECT lhdiscord.link_account(g, '94000000000000000' || g, 'd' || g, NULL, NULL, 'tok' || g) FROM generate_series(1, 5) g;
	SELECT lhdiscord.notify(2, 'NewTicketNotification', 'still queued');
	SELECT lhdiscord.load_snapshot('[{"user": {"id": "940000000000000001"}, "roles": []}]');
	INSERT INTO lhdiscord.break_glass (user_id, reason, expires_at) VALUES (3, 'incident', now() + interval '1 day');
});
my $counts = q{SELECT (SELECT count(*) FROM lhdiscord.users) || '|' || (SELECT count(*) FROM lhdiscord.user_roles)
	|| '|' || (SELECT count(*) FROM lhdiscord.discord_accounts) || '|' || (SELECT count(*) FROM lhdiscord.role_map)
	|| '|' || (SELECT count(*) FROM lhdiscord.audit_log) || '|' || (SELECT count(*) FROM lhdiscord.snapshot_members)
	|| '|' || (SELECT count(*) FROM lhdiscord.break_glass)
	|| '|' || (SELECT count(*) FROM lhdiscord.outbox WHERE kind = 'dm')
	|| '|' || (SELECT count(*) FROM lhdiscord.outbox WHERE kind = 'roles' AND state = 'pending')};
my $before = $q->($counts);
like($before, qr/^5\|1\|5\|1\|\d+\|1\|1\|1\|5$/, 'source: one DM queued, five convergences');

my $dump = PostgreSQL::Test::Utils::tempdir() . '/src.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('src') ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE dst');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('dst'), $dump ], 'pg_restore succeeds');
(my $expected = $before) =~ s/\|1\|5$/|0|5/;
is($node->safe_psql('dst', $counts), $expected,
	'users, roles, accounts, role map, audit log, snapshot and break-glass restored; no DM; a convergence per account');
is($node->safe_psql('dst', q{SELECT t.access_token FROM lhdiscord.discord_accounts a, lhdiscord.account_tokens(a.id) t WHERE a.user_id = 2}),
	'tok2', 'encrypted tokens survive and still decrypt (same key)');
is($node->safe_psql('dst', q{SELECT count(*) FROM lhdiscord.audit_log}),
	$node->safe_psql('src', q{SELECT count(*) FROM lhdiscord.audit_log}), 'the audit log was restored');
my ($ret, $out, $err) = $node->psql('dst', 'DELETE FROM lhdiscord.audit_log');
like($err, qr/append-only/, 'and is still append-only');

$node->stop;
done_testing();
