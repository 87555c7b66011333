-- wrk_put_role.lua - load-test the route lhdiscord calls most:
--   PUT /api/v10/guilds/<guild>/members/<user>/roles/<role>
-- with the headers the extension sends (Bot token, DiscordBot User-Agent,
-- X-Audit-Log-Reason), cycling through USER_COUNT consecutive user ids that
-- start at BASE_USER. Each wrk thread takes a different slice of the cycle.
--
-- Settings, in order of precedence: wrk script arguments after "--",
-- environment variables, defaults.
--   wrk ... -s wrk_put_role.lua http://127.0.0.1:PORT -- GUILD TOKEN BASE_USER ROLE [USER_COUNT]
--   MOCK_GUILD_ID, MOCK_BOT_TOKEN, MOCK_BASE_USER, MOCK_ROLE_ID, MOCK_USER_COUNT
--
-- The mock must know the guild, the role and the members, e.g.:
--   curl -X POST http://127.0.0.1:PORT/_mock/guilds -d '{"id": "1100000000000000001",
--     "roles": ["1200000000000000001"],
--     "generate": {"count": 1000, "start_id": 300000000000000000}}'
-- At the end the script prints how many responses had each status code.

local defaults = {
   guild = "1100000000000000001",
   token = "mock-bot-token",
   base_user = "300000000000000000",
   role = "1200000000000000001",
   count = "1000",
}

local function setting(args, index, env, default)
   if args and args[index] and args[index] ~= "" then
      return args[index]
   end
   local value = os.getenv(env)
   if value and value ~= "" then
      return value
   end
   return default
end

-- Add a small non-negative integer to a decimal string. Snowflakes exceed
-- 2^53, so they cannot be handled as Lua numbers without losing digits.
local function add_decimal(str, n)
   local digits = {}
   for i = 1, #str do
      digits[i] = tonumber(str:sub(i, i))
   end
   local carry = n
   for i = #digits, 1, -1 do
      local v = digits[i] + carry
      digits[i] = v % 10
      carry = math.floor(v / 10)
      if carry == 0 then break end
   end
   local out = table.concat(digits)
   while carry > 0 do
      out = tostring(carry % 10) .. out
      carry = math.floor(carry / 10)
   end
   return out
end

-- setup() runs once per thread in the main Lua state: number the threads.
local thread_count = 0
function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end
threads = {}

-- init() runs in each thread's own Lua state.
function init(args)
   local guild = setting(args, 1, "MOCK_GUILD_ID", defaults.guild)
   local token = setting(args, 2, "MOCK_BOT_TOKEN", defaults.token)
   local base = setting(args, 3, "MOCK_BASE_USER", defaults.base_user)
   local role = setting(args, 4, "MOCK_ROLE_ID", defaults.role)
   local count = tonumber(setting(args, 5, "MOCK_USER_COUNT", defaults.count))

   headers = {
      ["Authorization"] = "Bot " .. token,
      ["User-Agent"] = "DiscordBot (https://example.invalid, 0.1)",
      ["X-Audit-Log-Reason"] = "bench",
   }
   -- Pre-build the request paths once; request() just cycles through them.
   paths = {}
   local prefix = "/api/v10/guilds/" .. guild .. "/members/"
   for i = 0, count - 1 do
      paths[i + 1] = prefix .. add_decimal(base, i) .. "/roles/" .. role
   end
   index = (thread_index or 0) * 7919 % count   -- spread the threads out
   statuses = {}
end

function request()
   index = index % #paths + 1
   -- body "" makes wrk send "Content-Length: 0", as Discord expects on PUT.
   return wrk.format("PUT", paths[index], headers, "")
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local totals = {}
   for _, thread in ipairs(threads) do
      local counts = thread:get("statuses")
      for status, n in pairs(counts or {}) do
         totals[status] = (totals[status] or 0) + n
      end
   end
   io.write("status counts:")
   for status, n in pairs(totals) do
      io.write(string.format(" %d=%d", status, n))
   end
   io.write("\n")
end
