<?php

// examples/php/src/NotFound.php: P0002: the portal user or the Discord
// account named does not exist (UserNotFound, AccountNotFound).

declare(strict_types=1);

namespace Lhdiscord;

class NotFound extends LhdiscordException
{
}
