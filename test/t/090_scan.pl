# Guild member scan by the worker against the mock: 2,500 members in three
# pages, complete only after the last page, then a reconcile; a scan cut off
# by 5xx stays incomplete and is never used; an emptied guild is held back
# by the shrink guard; the scheduled reconcile runs on its interval.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Utils;
use Test::More;

start_mock();
mock_post('/_mock/guilds', { id => GUILD_ID, auto_roles => JSON::PP::true,
	generate => { count => 2500, start_id => '900000000000000000', roles => ['900000000000000131'] } });
my $node = new_node('scan', conf => { 'lhdiscord.max_attempts' => 2, 'lhdiscord.reconcile_interval' => 0 });
my $q = sub { $node->safe_psql('postgres', $_[0]) };
$q->(q{
	SELECT lhdiscord.map_role('hauling.member', '900000000000000131');
	INSERT INTO lhdiscord.users (user_id, username, membership_level) VALUES (1, 'alice', 'traveler'), (2, 'bob', 'traveler');
	INSERT INTO lhdiscord.role_state VALUES ('900000000000000007', '{}');
	SELECT lhdiscord.link_account(1, '900000000000000007', 'alice_d');
});
ok(wait_for(sub { $q->("SELECT count(*) FROM lhdiscord.outbox WHERE state <> 'done'") eq '0' }, 30), 'link settled');

my $seq = mock_get('/_mock/requests?since=0')->{last_seq};
my $snap = $q->('SELECT lhdiscord.request_member_scan()');
ok(wait_for(sub { $q->("SELECT complete FROM lhdiscord.member_snapshots WHERE id = $snap") eq 't' }, 60),
	'scan completed');
my @pages = grep { $_->{path} =~ m{/members$} } @{ mock_requests($seq) };
is(scalar(@pages), 3, 'three pages');
is_deeply([ map { $_->{query}{limit} } @pages ], [ '1000', '1000', '1000' ], 'limit=1000 on every page');
is($pages[0]{query}{after}, '0', 'first page after=0');
is($pages[1]{query}{after}, '900000000000000999', 'next page after the highest id of the previous one');
is($q->("SELECT member_count || '|' || trusted FROM lhdiscord.member_snapshots WHERE id = $snap"), '2500|true',
	'2500 members, trusted');
ok(wait_for(sub { $q->('SELECT status FROM lhdiscord.users WHERE user_id = 2') eq 'suspended' }, 30),
	'the worker reconciled after the scan (bob has no account: suspended)');
is($q->('SELECT status FROM lhdiscord.users WHERE user_id = 1'), 'active', 'alice is entitled by the scan');
is($q->("SELECT count(*) FROM lhdiscord.audit_log WHERE action = 'entitlement.reconcile' AND (after_json->>'snapshot_id')::bigint = $snap"),
	'1', 'the reconcile used the new snapshot as evidence');

# A scan cut off by 5xx after its first page stays incomplete and unused.
mock_post('/_mock/faults', { method => 'GET', path => '/members$', query => 'after=[1-9]', status => 503, count => -1 });
my $cut = $q->('SELECT lhdiscord.request_member_scan()');
ok(wait_for(sub { $q->("SELECT state FROM lhdiscord.outbox WHERE kind = 'member_scan' AND payload->>'snapshot_id' = '$cut'") eq 'dead' }, 60),
	'the scan job died after its retries');
is($q->("SELECT complete || '|' || trusted || '|' || member_count FROM lhdiscord.member_snapshots WHERE id = $cut"),
	'false|false|1000', 'the interrupted snapshot holds the first page but is not complete');
is($q->('SELECT snapshot_id FROM lhdiscord.access_context()'), $snap, 'reconcile still uses the last complete snapshot');
is($q->("SELECT count(*) FROM lhdiscord.audit_log WHERE action = 'entitlement.reconcile' AND (after_json->>'snapshot_id')::bigint = $cut"),
	'0', 'the incomplete snapshot was never used');
mock_delete('/_mock/faults');

# The guild empties: the scan completes but the shrink guard holds it back.
mock_post('/_mock/guilds', { id => GUILD_ID, auto_roles => JSON::PP::true, members => [] });
my $empty = $q->('SELECT lhdiscord.request_member_scan()');
ok(wait_for(sub { $q->("SELECT complete FROM lhdiscord.member_snapshots WHERE id = $empty") eq 't' }, 60),
	'empty scan completed');
is($q->("SELECT trusted FROM lhdiscord.member_snapshots WHERE id = $empty"), 'f', 'but is not trusted');
is($q->('SELECT status FROM lhdiscord.users WHERE user_id = 1'), 'active', 'nobody was suspended because of it');
like(slurp_file($node->logfile), qr/member snapshot $empty is not trusted: 0 members, previous trusted snapshot had 2500/,
	'the hold is logged');

# The scheduled reconcile runs on its interval.
$q->(q{UPDATE lhdiscord.users SET status = 'active' WHERE user_id = 2});
$q->(q{ALTER SYSTEM SET lhdiscord.reconcile_interval = 1});
$node->reload;
ok(wait_for(sub { $q->('SELECT status FROM lhdiscord.users WHERE user_id = 2') eq 'suspended' }, 30),
	'the scheduled reconcile suspended bob again');

$node->stop;
done_testing();
