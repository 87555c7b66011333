<?php

// examples/php/src/InvalidArgument.php: 22023: an argument lhdiscord refuses
// (UnknownNotification, InvalidLane, an empty or control-character name).

declare(strict_types=1);

namespace Lhdiscord;

class InvalidArgument extends LhdiscordException
{
}
