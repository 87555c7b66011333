# LhdTest.pm: helpers for lhdiscord's TAP integration tests.
#
# Starts the project's mock Discord server (test/mock_discord) on loopback,
# talks to its control API, and creates PostgreSQL::Test::Cluster nodes with
# shared_preload_libraries = 'lhdiscord' and the worker pointed at the mock.
# Every wait is bounded; the mock is stopped when the test script ends.
package LhdTest;

use strict;
use warnings;

use Exporter 'import';
use File::Temp qw(tempdir);
use HTTP::Tiny;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

our @EXPORT = qw(start_mock mock_get mock_post mock_delete mock_put new_node wait_for
  mock_requests mock_stats setup_guild q_try q_is BOT_TOKEN GUILD_ID TEST_KEY);

use constant BOT_TOKEN => 'lhd-test-bot-token.Z9f3Q';
use constant GUILD_ID  => '100000000000000001';
use constant TEST_KEY  => ($ENV{LHD_TEST_KEY}
	  // '000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f');

my $http = HTTP::Tiny->new(timeout => 10, keep_alive => 1);
my $json = JSON::PP->new->utf8->canonical;
my @mock_pids;
our $MOCK_PORT;
our $MOCK_LOG;
our $MOCK_GATEWAY_PORT;

# Start the mock; returns its port.  gateway => 1 also serves its Gateway.
sub start_mock
{
	my (%opt) = @_;
	my $dir = tempdir(CLEANUP => 1);
	my $portfile = "$dir/port";
	$MOCK_LOG = "$dir/mock.log";
	my $root = $ENV{TESTDIR} // '.';
	my @cmd = ('python3', "$root/mock_discord/mock_discord.py",
		'--host', '127.0.0.1', '--port', ($opt{port} // 0),
		'--port-file', $portfile, '--bot-token', BOT_TOKEN,
		'--client-id', '123456789012345678',
		'--client-secret', ($opt{client_secret} // 'mock-client-secret'),
		'--log', $MOCK_LOG);
	# The Gateway endpoint (python3-websockets), for the Gateway worker's tests.
	push @cmd, '--gateway-port', '0', '--gateway-port-file', "$dir/gwport" if $opt{gateway};
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>', "$dir/stdout");
		open(STDERR, '>', "$dir/stderr");
		exec(@cmd) or die "exec: $!";
	}
	push @mock_pids, $pid;
	for (1 .. 200)
	{
		last if -s $portfile;
		usleep(50_000);
	}
	die "mock Discord server did not start" unless -s $portfile;
	open(my $fh, '<', $portfile) or die;
	$MOCK_PORT = <$fh>;
	chomp $MOCK_PORT;
	close $fh;
	if ($opt{gateway})
	{
		open(my $gh, '<', "$dir/gwport") or die "mock Gateway did not start";
		$MOCK_GATEWAY_PORT = <$gh>;
		chomp $MOCK_GATEWAY_PORT;
		close $gh;
	}
	return $MOCK_PORT;
}

sub stop_mocks
{
	kill 'TERM', @mock_pids;
	waitpid($_, 0) for @mock_pids;
	@mock_pids = ();
}

END { stop_mocks(); }

sub _url { return "http://127.0.0.1:$MOCK_PORT$_[0]"; }

sub _decode
{
	my ($res, $what) = @_;
	die "mock $what failed: $res->{status} $res->{content}"
	  unless $res->{success} || $res->{status} == 404;
	return length($res->{content} // '') ? $json->decode($res->{content}) : undef;
}

sub mock_get { return _decode($http->get(_url($_[0])), "GET $_[0]"); }

sub mock_post
{
	my ($path, $body) = @_;
	return _decode(
		$http->post(
			_url($path),
			{
				headers => { 'content-type' => 'application/json' },
				content => $json->encode($body // {})
			}),
		"POST $path");
}

sub mock_delete { return _decode($http->delete(_url($_[0])), "DELETE $_[0]"); }

sub mock_put { return _decode($http->put(_url($_[0])), "PUT $_[0]"); }

sub mock_requests
{
	my ($since, $prefix) = @_;
	my $q = "?since=" . ($since // 0);
	$q .= "&path_prefix=$prefix" if $prefix;
	return mock_get("/_mock/requests$q")->{requests};
}

sub mock_stats { return mock_get('/_mock/stats'); }

# A guild that knows every role id lhdiscord may send.
sub setup_guild
{
	my (%opt) = @_;
	mock_post('/_mock/guilds',
		{ id => GUILD_ID, auto_roles => JSON::PP::true, members => $opt{members} // [] });
}

# A node with the extension preloaded and the worker aimed at the mock.
sub new_node
{
	my ($name, %opt) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(allows_streaming => $opt{streaming} ? 1 : 0);
	my $conf = "shared_preload_libraries = 'lhdiscord'\n"
	  . "lhdiscord.database = 'postgres'\n"
	  . "lhdiscord.api_base_url = 'http://127.0.0.1:$MOCK_PORT/api/v10'\n"
	  . "lhdiscord.bot_token = '" . ($opt{bot_token} // BOT_TOKEN) . "'\n"
	  . "lhdiscord.guild_id = '" . GUILD_ID . "'\n"
	  . "lhdiscord.encryption_key = '" . TEST_KEY . "'\n"
	  . "lhdiscord.retry_base_delay = 100\n"
	  . "lhdiscord.retry_max_delay = 2\n";
	$conf .= "$_ = $opt{conf}{$_}\n" for sort keys %{ $opt{conf} // {} };
	$node->append_conf('postgresql.conf', $conf);
	$node->start unless $opt{no_start};
	$node->safe_psql('postgres', 'CREATE EXTENSION lhdiscord')
	  unless $opt{no_start} || $opt{no_extension};
	return $node;
}

# A query's output, or undef (with the error as a diagnostic) when it
# failed: for polling a node that may be restarting or refusing a setting.
sub q_try
{
	my ($node, $sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $sql);
	if ($ret != 0)
	{
		diag("query failed: $sql\n$err");
		return undef;
	}
	return $out;
}

# Did the query succeed with exactly $want as output?
sub q_is
{
	my ($node, $sql, $want) = @_;
	my $v = q_try($node, $sql);
	return defined $v && $v eq $want;
}

# Poll $cond (a sub returning true when done) every 50 ms, at most $secs.
sub wait_for
{
	my ($cond, $secs, $what) = @_;
	my $deadline = time() + ($secs // 30);
	while (time() < $deadline)
	{
		return 1 if $cond->();
		usleep(50_000);
	}
	diag("timed out after ${secs}s waiting for " . ($what // 'condition'));
	return 0;
}

1;
