<?php

// examples/php/src/AccountNotFound.php: P0002 "Discord account N does not
// exist": the account id is unknown (unlinked meanwhile?).

declare(strict_types=1);

namespace Lhdiscord;

class AccountNotFound extends NotFound
{
}
