# Loading the library on every supported PostgreSQL version, with every
# secret setting set, changed on reload and reset.
#
# From PostgreSQL 16 on, string settings' values and extras belong to guc.c's
# own allocator (guc_malloc/guc_free); a check hook that hands it malloc()'d
# memory aborts the server ("munmap_chunk(): invalid pointer") as soon as the
# library is loaded.  This test loads lhdiscord both ways (preloaded by the
# postmaster, and with a plain LOAD in a session), moves every secret and the
# normalised api_base_url through set, reload with new values, reset to the
# default and set again, plus SET/RESET/SET LOCAL, ALTER SYSTEM and rejected
# values, and checks that no process died and that no secret reached the log.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use LhdTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $KEY1 = TEST_KEY;
my $KEY2 = 'ff' x 32;
my $KEY3 = 'ee' x 32;
my @SECRETS = qw(bot_token client_secret encryption_key);
# Values that only the configuration files hold (the TAP clusters log every
# statement, so values set by SQL are in the log by design).
my @FILE_ONLY = ('lhd-secret-bot-one', 'lhd-secret-client-one', 'lhd-secret-bot-two',
	'lhd-secret-client-two', $KEY1, $KEY2);

my $MASKS = join(', ', map { "current_setting('lhdiscord.$_')" } @SECRETS);

# The secrets and the URL live in an included file that each step rewrites;
# an empty file resets them to their defaults.
sub write_settings
{
	my ($node, $set) = @_;
	my $file = $node->data_dir . '/lhd_settings.conf';
	open(my $fh, '>', $file) or die "open $file: $!";
	if ($set == 1)
	{
		print $fh "lhdiscord.bot_token = 'lhd-secret-bot-one'\n"
		  . "lhdiscord.client_secret = 'lhd-secret-client-one'\n"
		  . "lhdiscord.encryption_key = '$KEY1'\n"
		  . "lhdiscord.api_base_url = 'http://127.0.0.1:9/one/'\n";
	}
	elsif ($set == 2)
	{
		print $fh "lhdiscord.bot_token = 'lhd-secret-bot-two'\n"
		  . "lhdiscord.client_secret = 'lhd-secret-client-two'\n"
		  . "lhdiscord.encryption_key = '$KEY2'\n"
		  . "lhdiscord.api_base_url = 'http://127.0.0.1:9/two/'\n";
	}
	close $fh;
}

sub new_load_node
{
	my ($name, $preload) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	my $conf = "lhdiscord.database = 'postgres'\n"
	  . "lhdiscord.api_mode = 'fake'\n"
	  . "lhdiscord.guild_id = '" . GUILD_ID . "'\n"
	  . "include_if_exists = 'lhd_settings.conf'\n";
	$conf = "shared_preload_libraries = 'lhdiscord'\n" . $conf if $preload;
	$node->append_conf('postgresql.conf', $conf);
	write_settings($node, 1);
	return $node;
}

# No server process died, and no secret value was written to the log.
sub check_log
{
	my ($node, $what, $secrets_hidden) = @_;
	my $log = slurp_file($node->logfile);
	unlike($log, qr/terminated by signal|was terminated|munmap_chunk|double free|invalid pointer/,
		"$what: no server process died");
	return unless $secrets_hidden;
	my @leaked = grep { index($log, $_) >= 0 } @FILE_ONLY;
	is("@leaked", '', "$what: no secret in the server log");
}

sub postmaster_pid
{
	my ($node) = @_;
	open(my $fh, '<', $node->data_dir . '/postmaster.pid') or return '';
	my $pid = <$fh>;
	close $fh;
	chomp $pid;
	return $pid;
}

#
# 1. shared_preload_libraries.
#
my $node = new_load_node('preload', 1);
$node->start;
my $pid = postmaster_pid($node);
$node->safe_psql('postgres', 'CREATE EXTENSION lhdiscord');
is($node->safe_psql('postgres', "SELECT $MASKS"), '********|********|********',
	'preload: every secret is set (masked)');
is($node->safe_psql('postgres', 'SHOW lhdiscord.api_base_url'), 'http://127.0.0.1:9/one',
	'preload: api_base_url normalised');
ok( $node->poll_query_until('postgres', 'SELECT running FROM lhdiscord.worker_status'),
	'preload: the worker runs');

# Reload with new values.
write_settings($node, 2);
$node->reload;
ok( $node->poll_query_until('postgres',
		"SELECT current_setting('lhdiscord.api_base_url') = 'http://127.0.0.1:9/two'"),
	'preload: reload applies new values');
is($node->safe_psql('postgres', "SELECT $MASKS"), '********|********|********',
	'preload: the new secrets are set');

# Reload with none: every setting back to its default.
write_settings($node, 0);
$node->reload;
ok( $node->poll_query_until('postgres',
		"SELECT current_setting('lhdiscord.api_base_url') = 'https://discord.com/api/v10'"),
	'preload: reload resets to the defaults');
is($node->safe_psql('postgres', "SELECT $MASKS"), '||', 'preload: the secrets are reset');

# And set again.
write_settings($node, 1);
$node->reload;
ok( $node->poll_query_until('postgres',
		"SELECT concat_ws('|', $MASKS) = '********|********|********'"),
	'preload: set again on reload');

# Session settings: a session may clear a secret (SET ... = ''), and RESET,
# SET LOCAL, SET TO DEFAULT and RESET ALL bring the configured ones back.
is( $node->safe_psql(
		'postgres', qq{
	SET lhdiscord.bot_token = '';
	SET lhdiscord.api_base_url = 'http://127.0.0.1:9/session/';
	SELECT $MASKS, current_setting('lhdiscord.api_base_url');
	RESET lhdiscord.bot_token;
	SET lhdiscord.client_secret = '';
	SELECT $MASKS;
	BEGIN;
	SET LOCAL lhdiscord.bot_token = '';
	SET LOCAL lhdiscord.encryption_key = '';
	SELECT $MASKS;
	ROLLBACK;
	SELECT $MASKS;
	SET lhdiscord.client_secret TO DEFAULT;
	SELECT $MASKS;
	SET lhdiscord.encryption_key = '';
	RESET ALL;
	SELECT $MASKS, current_setting('lhdiscord.api_base_url');
}),
	"|********|********|http://127.0.0.1:9/session\n"
	  . "********||********\n"
	  . "||\n"
	  . "********||********\n"
	  . "********|********|********\n"
	  . "********|********|********|http://127.0.0.1:9/one",
	'preload: SET, RESET, SET LOCAL and RESET ALL of the secrets');

# Rejected values leave the setting as it was, and are not echoed.
my ($rc, $out, $err) = $node->psql('postgres', qq{
	SET lhdiscord.bot_token = E'lhd-secret-bot-session\\n';
});
like($err, qr/ERROR: .*secret lhdiscord parameter/, 'preload: a bad secret is rejected');
unlike($err, qr/lhd-secret/, 'preload: the rejected secret is not echoed');
($rc, $out, $err) = $node->psql('postgres', q{SET lhdiscord.encryption_key = 'abc'});
like($err, qr/ERROR: .*lhdiscord/, 'preload: a bad key is rejected');
is($node->safe_psql('postgres', "SELECT $MASKS"), '********|********|********',
	'preload: secrets unchanged by the rejected values');

# ALTER SYSTEM (validated in the session, applied on reload) and its RESET.
$node->safe_psql('postgres', q{ALTER SYSTEM SET lhdiscord.bot_token = 'lhd-secret-bot-system'});
$node->safe_psql('postgres', q{ALTER SYSTEM SET lhdiscord.api_base_url = 'http://127.0.0.1:9/system/'});
$node->reload;
ok( $node->poll_query_until('postgres',
		"SELECT current_setting('lhdiscord.api_base_url') = 'http://127.0.0.1:9/system'"),
	'preload: ALTER SYSTEM values applied on reload');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET lhdiscord.bot_token');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET lhdiscord.api_base_url');
$node->reload;
ok( $node->poll_query_until('postgres',
		"SELECT current_setting('lhdiscord.api_base_url') = 'http://127.0.0.1:9/one'"),
	'preload: ALTER SYSTEM RESET applied on reload');
is($node->safe_psql('postgres', "SELECT $MASKS"), '********|********|********',
	'preload: secrets after ALTER SYSTEM RESET');

is(postmaster_pid($node), $pid, 'preload: the same postmaster throughout');
ok($node->safe_psql('postgres', 'SELECT running FROM lhdiscord.worker_status') eq 't',
	'preload: the worker still runs');
$node->restart;
is($node->safe_psql('postgres', "SELECT $MASKS"), '********|********|********',
	'preload: restart with every secret set');
$node->stop;
check_log($node, 'preload', 1);

#
# 2. Plain LOAD in a session (no shared_preload_libraries): the settings of
# postgresql.conf are placeholders until the library defines them.
#
$node = new_load_node('load', 0);
$node->start;
$pid = postmaster_pid($node);
is( $node->safe_psql(
		'postgres', qq{
	LOAD 'lhdiscord';
	SELECT $MASKS, current_setting('lhdiscord.api_base_url');
	LOAD 'lhdiscord';
	SET lhdiscord.bot_token = '';
	RESET lhdiscord.client_secret;
	SELECT $MASKS;
	RESET ALL;
	SELECT $MASKS;
}),
	"********|********|********|http://127.0.0.1:9/one\n"
	  . "|********|********\n"
	  . "********|********|********",
	'LOAD: every secret set, SET/RESET work');

# A placeholder set in the session before LOAD goes through the check hooks.
is( $node->safe_psql(
		'postgres', qq{
	SET lhdiscord.client_secret = '';
	SET lhdiscord.api_base_url = 'http://127.0.0.1:9/before-load/';
	LOAD 'lhdiscord';
	SELECT $MASKS, current_setting('lhdiscord.api_base_url');
}),
	'********||********|http://127.0.0.1:9/before-load',
	'LOAD: session values set before LOAD');

# A reload while the library is loaded in the session: new values, then none.
write_settings($node, 2);
is( $node->safe_psql(
		'postgres', qq{
	LOAD 'lhdiscord';
	SELECT current_setting('lhdiscord.api_base_url');
	SELECT pg_reload_conf();
	SELECT pg_sleep(2);
	SELECT $MASKS, current_setting('lhdiscord.api_base_url');
}),
	"http://127.0.0.1:9/one\nt\n\n********|********|********|http://127.0.0.1:9/two",
	'LOAD: reload with new values in a loaded session');
write_settings($node, 0);
is( $node->safe_psql(
		'postgres', qq{
	LOAD 'lhdiscord';
	SELECT current_setting('lhdiscord.api_base_url');
	SELECT pg_reload_conf();
	SELECT pg_sleep(2);
	SELECT $MASKS, current_setting('lhdiscord.api_base_url');
}),
	"http://127.0.0.1:9/two\nt\n\n||" . "|https://discord.com/api/v10",
	'LOAD: reload resetting every setting in a loaded session');
write_settings($node, 1);
$node->reload;
ok( $node->poll_query_until('postgres',
		"SELECT current_setting('lhdiscord.api_base_url') = 'http://127.0.0.1:9/one/'"),
	'LOAD: set again on reload');
is($node->safe_psql('postgres', "LOAD 'lhdiscord'; SELECT $MASKS"), '********|********|********',
	'LOAD: secrets set again');
is(postmaster_pid($node), $pid, 'LOAD: the same postmaster throughout');
$node->stop;
# Without the library in the postmaster its settings are plain placeholders
# there, and the postmaster logs their changes on reload: only preloading
# keeps secrets out of the log, so that is not checked here.
check_log($node, 'LOAD', 0);

done_testing();
