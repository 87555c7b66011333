# notify() delivered by the worker: every active account gets the DM once;
# one account with DMs closed (50007) or unknown to Discord does not affect
# the others and is not retried; long content arrives as ordered parts.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Utils;
use Test::More;

start_mock();
setup_guild();
mock_post('/_mock/users', { id => '920000000000000001', username => 'open' });
mock_post('/_mock/users', { id => '920000000000000002', username => 'closed', dms_closed => JSON::PP::true });
# 920000000000000003 is unknown to Discord.
my $node = new_node('notify', conf => { 'lhdiscord.max_discord_accounts' => 3 });
my $q = sub { $node->safe_psql('postgres', $_[0]) };
$q->(q{
	INSERT INTO lhdiscord.users (user_id, username, membership_level, notify_discord)
	  VALUES (1, 'alice', 'citizen', true);
	SELECT lhdiscord.link_account(1, '92000000000000000' || g, 'a' || g) FROM generate_series(1, 3) g;
});

is($q->(q{SELECT lhdiscord.notify(1, 'NewTicketNotification', 'Ticket #7 was opened')}), '3',
	'one DM queued per active account');
ok(wait_for(sub { $q->(q{SELECT count(*) FROM lhdiscord.outbox WHERE kind = 'dm' AND state IN ('pending', 'in_flight')}) eq '0' }, 30),
	'all DM jobs settled');
is($q->(q{SELECT string_agg(discord_user_id || ':' || state || ':' || attempts, ',' ORDER BY discord_user_id) FROM lhdiscord.outbox WHERE kind = 'dm'}),
	'920000000000000001:done:1,920000000000000002:failed:1,920000000000000003:failed:1',
	'delivered to the open account; closed (50007) and unknown (50033) failed once, no retry');
my $msgs = mock_get('/_mock/messages');
is(scalar(@$msgs), 1, 'exactly one message delivered');
is($msgs->[0]{recipient_id}, '920000000000000001', 'to the account that accepts DMs');

# Long content: ordered parts, each once.
my $content = join("\n", map { "Line $_ of a long ticket reply that goes on and on." } 1 .. 90);
cmp_ok(length($content), '>', 4500, 'content over 4500 characters');
$q->(q{UPDATE lhdiscord.discord_accounts SET status = 'brigged' WHERE discord_user_id <> '920000000000000001'});
is($q->("SELECT lhdiscord.notify(1, 'NewTicketReplyNotification', \$\$$content\$\$)"), '1', 'only the active account');
ok(wait_for(sub { scalar(@{ mock_get('/_mock/messages') }) == 4 }, 30), 'three more messages');
$msgs = mock_get('/_mock/messages');
my @parts = @$msgs[ 1 .. 3 ];
is(join("\n", map { $_->{content} } @parts), $content, 'the parts, in order, are the content');
ok(!grep({ length($_->{content}) > 2000 } @parts), 'no part over 2000 characters');
my %nonces = map { $_->{nonce} => 1 } @parts;
is(scalar(keys %nonces), 3, 'a nonce per part');

$node->stop;
done_testing();
