<?php

// examples/php/src/AccountLimitReached.php: 23514 "Maximum Discord accounts
// reached.": the user has lhdiscord.max_discord_accounts accounts already.

declare(strict_types=1);

namespace Lhdiscord;

class AccountLimitReached extends LhdiscordException
{
}
